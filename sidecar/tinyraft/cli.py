"""The `tinyraft` command. Each subcommand lives with the code it drives; this module
only parses arguments and dispatches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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

    demo = sub.add_parser("demo", help="a guided tour of a cluster surviving failures")
    demo.add_argument("--seed", type=int, default=7, help="the simulation seed to narrate")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sidecar"]:
        # The sidecar parses its own flags, each also an environment variable.
        from tinyraft.server.main import main as sidecar_main

        return sidecar_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "example":
        from tinyraft.examples.cli import main_example

        return main_example(args.name, args.listen)
    if args.command == "sim":
        from tinyraft.sim.runner import main as sim_main

        seeds = args.seeds or (1 if args.seed is not None else 100)
        return sim_main(seeds, args.seed or 0, args.members, args.jobs, args.json, args.verbose)
    if args.command == "demo":
        from tinyraft.sim.demo import main as demo_main

        return demo_main(args.seed)
    return 2


if __name__ == "__main__":
    sys.exit(main())
