"""The `tinyraft` command. Each subcommand lives with the code it drives; this module
only parses arguments and dispatches."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_ADDR = "127.0.0.1:7001"  # also tinyraft.ops.DEFAULT_ADDR (not imported: keeps --help fast)
DEFAULT_LOCAL_DIR = ".tinyraft-local"
OPS_COMMANDS = ("status", "apply", "query", "members", "transfer-leadership", "snapshot")


def _member_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or any(n < 1 or n > 9 for n in counts):
        raise argparse.ArgumentTypeError(
            f"--members takes member counts from 1 to 9, comma-separated (e.g. 3,5), not {text!r}"
        )
    return counts


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:7001), not {text!r}")
    return text


def _addr_option(text: str) -> str:
    try:
        return _address(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err} (from --addr or TINYRAFT_ADDR)") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"expected a number of calls per second > 0 (e.g. 500), not {text!r}"
        )
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, not {text!r}")
    return value


def _pem_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _ops_options() -> argparse.ArgumentParser:
    """Options every operations command takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--addr",
        type=_addr_option,
        default=os.environ.get("TINYRAFT_ADDR", DEFAULT_ADDR),
        metavar="HOST:PORT",
        help=f"any member's Raft/Caller port (default: $TINYRAFT_ADDR, else {DEFAULT_ADDR})",
    )
    group.add_argument(
        "--tls-ca", type=_pem_file, metavar="PEM", help="CA certificate of the cluster (mTLS)"
    )
    group.add_argument("--tls-cert", type=_pem_file, metavar="PEM", help="client certificate")
    group.add_argument("--tls-key", type=_pem_file, metavar="PEM", help="client private key")
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long, retries included (default 10)",
    )
    group.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return common


def _add_ops_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = _ops_options()

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
    ) -> argparse.ArgumentParser:
        cmd = parent.add_parser(name, parents=[common], help=help, description=help)
        cmd.set_defaults(leaf=cmd)  # so that a usage error shows this command's usage
        return cmd

    command(sub, "status", "every member as the leader sees it (role, term, indexes, lag)")
    apply = command(sub, "apply", "apply a command to the replicated state; print its result")
    apply.add_argument("data", metavar="DATA", help="the command; - reads it from stdin")
    query = command(sub, "query", "ask the replicated state a read-only question")
    query.add_argument("data", metavar="DATA", help="the request; - reads it from stdin")
    query.add_argument(
        "--consistency",
        choices=["linearizable", "lease", "stale"],
        default="linearizable",
        help="linearizable (default): confirmed with a quorum; lease: no extra round trip; "
        "stale: whatever the --addr member has applied",
    )
    members = sub.add_parser("members", help="list, add, promote or remove members")
    msub = members.add_subparsers(dest="members_command", required=True)
    command(msub, "list", "the members and their suffrage, from the leader")
    add = command(msub, "add", "add a member as a learner (its sidecar then joins with RAFT_JOIN)")
    add.add_argument("id", metavar="ID", help="the new member's id (its NODE_ID)")
    add.add_argument("address", type=_address, metavar="ADDRESS", help="its HOST:PORT")
    command(msub, "promote", "make a learner a voter").add_argument("id", metavar="ID")
    command(msub, "remove", "remove a voter or a learner").add_argument("id", metavar="ID")
    transfer = command(sub, "transfer-leadership", "hand leadership to another voter")
    transfer.add_argument(
        "--to", metavar="ID", help="the new leader (default: the most caught-up voter)"
    )
    command(sub, "snapshot", "snapshot the --addr member now; print index, term and size")


def _add_local_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    local = sub.add_parser(
        "local", help="run a cluster of real sidecar and Module processes on this machine"
    )
    lsub = local.add_subparsers(dest="local_command", required=True)
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_LOCAL_DIR),
        metavar="DIR",
        help=f"members' data, logs and the local.json state file (default: ./{DEFAULT_LOCAL_DIR}"
        " in the current directory)",
    )
    data_dir.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the cluster (default 30)",
    )
    up = lsub.add_parser(
        "up",
        parents=[data_dir],
        help="start (or restart, on an existing --data-dir) a cluster and show it live "
        "until Ctrl-C",
    )
    up.add_argument(
        "--members",
        type=_positive,
        metavar="N",
        help="how many members a new cluster gets (default 3; an existing one keeps its own)",
    )
    up.add_argument(
        "--module",
        choices=["kv", "wordtracker"],
        help="the example Module each member runs (default kv; an existing one keeps its own)",
    )
    up.add_argument(
        "--detach",
        action="store_true",
        help="start, print the addresses and return, leaving the processes running "
        "(tinyraft local down stops them)",
    )
    up.add_argument("--json", action="store_true", help="with --detach: print one JSON document")
    up.set_defaults(leaf=up)
    lsub.add_parser(
        "down", parents=[data_dir], help="stop the cluster's processes (the data is kept)"
    )
    restart = lsub.add_parser(
        "restart",
        parents=[data_dir],
        help="SIGKILL one member's sidecar and start it again (works while `up` runs)",
    )
    restart.add_argument("id", metavar="ID", help="the member, e.g. n2")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyraft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("sim", help="run seeded simulations of faulty clusters of the Raft core")
    sim.add_argument("--seeds", type=_positive, help="how many seeds to run (default 100)")
    sim.add_argument("--seed", type=int, help="the first seed; alone, replays just that seed")
    sim.add_argument(
        "--members",
        type=_member_counts,
        default=[3, 5],
        help="member counts to cycle through (default 3,5)",
    )
    sim.add_argument(
        "--jobs", type=_positive, help="parallel worker processes (default: one per core)"
    )
    sim.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    sim.add_argument(
        "--verbose", action="store_true", help="with a single seed, print its event trace"
    )

    sub.add_parser(
        "sidecar",
        help="run one member (configured by environment variables or flags; see --help)",
        add_help=False,
    )
    example = sub.add_parser("example", help="run an example Module: kv or wordtracker")
    example.add_argument("name", choices=["kv", "wordtracker"])
    example.add_argument("--listen", required=True, metavar="HOST:PORT")

    sub.add_parser(
        "demo", help="a guided tour: a real local cluster surviving a leader crash, and more"
    )

    bench = sub.add_parser("bench", help="benchmark a local cluster through real Callers")
    bench.add_argument("--members", type=_positive, default=3)
    bench.add_argument("--concurrency", type=_positive, default=64, help="calls in flight")
    bench.add_argument(
        "--callers",
        type=_positive,
        default=1,
        help="Callers the calls share, round-robin (default 1: one application whose Caller "
        "batches its concurrent calls; more model more client processes)",
    )
    bench.add_argument("--size", type=_positive, default=128, help="command size in bytes")
    bench.add_argument("--seconds", type=_seconds, default=10.0, help="measured duration")
    bench.add_argument(
        "--reads",
        type=_fraction,
        default=0.0,
        help="fraction of queries, 0..1 (every key is written once before such a run)",
    )
    bench.add_argument(
        "--rate",
        type=_rate,
        metavar="PER_S",
        help="open loop: send this many calls per second across all workers, on a schedule, "
        "and measure latency from each scheduled send time (queueing counts); "
        "--concurrency caps the calls in flight (default: closed loop, as fast as answered)",
    )
    bench.add_argument(
        "--consistency", choices=["linearizable", "lease", "stale"], default="linearizable"
    )
    bench.add_argument("--no-fsync", action="store_true", help="unsafe: skip fsync (to compare)")
    bench.add_argument("--json", action="store_true", help="only the JSON result line")
    _add_ops_commands(sub)
    _add_local_commands(sub)
    return parser


def _run_ops(args: argparse.Namespace) -> int:
    tls = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls) and not all(tls):
        args.leaf.error("--tls-ca, --tls-cert and --tls-key go together: give all three or none")
    # gRPC's C core logs TLS handshake failures on stderr; the command says it in one line.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from tinyraft import ops

    target = ops.Target(args.addr, args.timeout, *tls)
    try:
        if args.command == "status":
            return ops.status(target, args.json)
        if args.command == "apply":
            return ops.apply(target, args.data, args.json)
        if args.command == "query":
            return ops.query(target, args.data, args.consistency, args.json)
        if args.command == "transfer-leadership":
            return ops.transfer_leadership(target, args.to, args.json)
        if args.command == "snapshot":
            return ops.snapshot(target, args.json)
        if args.members_command == "list":
            return ops.members_list(target, args.json)
        if args.members_command == "add":
            return ops.members_add(target, args.id, args.address, args.json)
        if args.members_command == "promote":
            return ops.members_promote(target, args.id, args.json)
        return ops.members_remove(target, args.id, args.json)
    except ops.OpsError as err:
        print(f"tinyraft: {err}", file=sys.stderr)
        return 1


def _run_local(args: argparse.Namespace) -> int:
    from tinyraft import local_cli

    try:
        if args.local_command == "up":
            if args.json and not args.detach:
                args.leaf.error("--json needs --detach (the live view is not JSON)")
            return local_cli.up(
                args.data_dir, args.members, args.module, args.detach, args.json, args.timeout
            )
        if args.local_command == "down":
            return local_cli.down(args.data_dir, args.timeout)
        return local_cli.restart(args.data_dir, args.id, args.timeout)
    except local_cli.LocalError as err:
        print(f"tinyraft: {err}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sidecar"]:
        # The sidecar parses its own flags, each also an environment variable.
        from tinyraft.server.main import main as sidecar_main

        return sidecar_main(argv[1:])
    args = _parser().parse_args(argv)
    starts = args.command in ("example", "bench", "demo") or (
        args.command == "local" and args.local_command in ("up", "restart")
    )
    if starts:  # an event loop, or processes that run one: a bad choice fails here
        from tinyraft.event_loop import loop_factory_or_exit

        loop_factory_or_exit()
    try:
        if args.command in OPS_COMMANDS:
            return _run_ops(args)
        if args.command == "local":
            return _run_local(args)
    except KeyboardInterrupt:
        print("tinyraft: interrupted", file=sys.stderr)
        return 130
    if args.command == "example":
        from tinyraft.examples.cli import main_example

        return main_example(args.name, args.listen)
    if args.command == "sim":
        from tinyraft.sim.runner import main as sim_main

        seeds = args.seeds or (1 if args.seed is not None else 100)
        return sim_main(seeds, args.seed or 0, args.members, args.jobs, args.json, args.verbose)
    if args.command == "bench":
        from tinyraft.bench import BenchConfig
        from tinyraft.bench import main as bench_main

        return bench_main(
            BenchConfig(
                members=args.members,
                concurrency=args.concurrency,
                callers=args.callers,
                size=args.size,
                seconds=args.seconds,
                reads=args.reads,
                rate=args.rate,
                consistency=args.consistency,
                fsync=not args.no_fsync,
            ),
            args.json,
        )
    if args.command == "demo":
        from tinyraft.demo import main as demo_main

        return demo_main()
    return 2


if __name__ == "__main__":
    sys.exit(main())
