"""`tinyraft demo`: the five-minute tour on a real local cluster.

Three sidecar processes and three word-tracker Modules on loopback, with real data
dirs: form the cluster, count words through a Caller, SIGKILL the leader, check no
acknowledged word was lost, retry a command and see it applied once, add a fourth
member as a learner and promote it. Every step is checked; exit status 0 only if
all of them held."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

from tinyraft.caller import BlockingCaller
from tinyraft.local import LocalCluster
from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc, caller_pb2_grpc
from tinyraft.v1 import caller_pb2 as cpb

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and", "the", "cat"]


def _add(word: str) -> bytes:
    return json.dumps({"op": "add", "word": word}).encode()


def _count(caller: BlockingCaller, word: str) -> int:
    answer = json.loads(caller.query(json.dumps({"op": "count", "word": word}).encode()))
    return int(answer["count"])


class Tour:
    def __init__(self, base: Path, console: Console) -> None:
        self.cluster = LocalCluster(base, module="wordtracker")
        self.say = console.print
        self.console = console
        self.failures = 0

    def check(self, ok: bool, sentence: str) -> None:
        self.say(f"  {'[green]✔' if ok else '[red]✘'}[/] {sentence}")
        self.failures += not ok

    def status_table(self) -> Table:
        c = self.cluster
        table = Table(title="cluster status (from the leader)")
        for col in ("member", "address", "suffrage", "role", "match", "lag", "state"):
            table.add_column(col)
        leader = c.leader()
        if leader is not None:
            for p in c.status(leader).members:
                table.add_row(p.member_id, p.address, p.suffrage, p.role, str(p.match_index),
                              str(p.lag), p.state)  # fmt: skip
        return table

    def run(self) -> int:
        c, say = self.cluster, self.say
        say("[bold]1. Three members form a cluster[/] (bootstrap n1, n2 and n3 join it).")
        started = time.monotonic()
        c.form(3)
        leader = c.leader()
        self.check(leader is not None, f"{leader} leads after {time.monotonic() - started:.1f}s; "
                   f"addresses {', '.join(c.addresses())}")  # fmt: skip

        say("[bold]2. A Caller counts words[/] (any member takes them; followers forward).")
        with BlockingCaller(c.addresses()) as caller:
            for word in WORDS:
                caller.apply(_add(word))
            self.check(
                _count(caller, "the") == 3, "12 words acknowledged; 'the' was counted 3 times"
            )

            say(f"[bold]3. The leader {leader} is killed with SIGKILL.[/]")
            assert leader is not None
            c.kill(leader)
            new = c.wait_for_new_leader(leader)
            self.check(True, f"{new} took over in term {c.status(new).term}")
            kept = all(_count(caller, w) == WORDS.count(w) for w in set(WORDS))
            self.check(kept, "no acknowledged word was lost")

            say("[bold]4. A command is retried[/] (its answer was lost): applied once only.")
            request = cpb.ApplyRequest(
                commands=[cpb.Command(client_id=7, sequence=1, ack_below=1, payload=_add("raft"))]
            )
            with c.channel(new) as ch:
                stub = caller_pb2_grpc.CallerStub(ch)
                first = stub.Apply(request, timeout=5).results[0].result
                second = stub.Apply(request, timeout=5).results[0].result
            self.check(first == second and _count(caller, "raft") == 1,
                       f"both attempts answered {first.decode()}; 'raft' counted once")  # fmt: skip

            say(f"[bold]5. {leader} restarts from its data dir and catches up.[/]")
            c.restart(leader)
            c.wait_for(lambda: (s := c.try_status(leader)) and s.applied_index >= c.status(new).commit_index,
                       20, f"{leader} to catch up")  # fmt: skip
            self.check(True, f"{leader} rejoined as the same member")

            say("[bold]6. A fourth member joins as a learner, then is promoted to voter.[/]")
            # Promotion is left to us (an operator) rather than to n4 itself.
            c.add("n4", join=[c.members[new].address], env={"RAFT_AUTO_PROMOTE": "false"})
            c.wait_for(lambda: _suffrage(c, new, "n4") == "learner", 20, "n4 to be a learner")
            self.check(True, "n4 is a learner: it replicates but does not vote")
            c.wait_for(lambda: (s := c.try_status("n4")) and s.applied_index >= c.status(new).commit_index,
                       20, "n4 to catch up")  # fmt: skip
            with c.channel(new) as ch:
                admin_pb2_grpc.AdminStub(ch).Promote(apb.MemberRequest(member_id="n4"), timeout=10)
            self.check(_suffrage(c, new, "n4") == "voter", "n4 caught up and was promoted to voter")
            caller.apply(_add("done"))
        self.console.print(self.status_table())
        return 0 if self.failures == 0 else 1


def _suffrage(c: LocalCluster, leader: str, member: str) -> str | None:
    try:
        members = c.status(leader).members
    except grpc.RpcError:
        return None
    return next((p.suffrage for p in members if p.member_id == member), None)


def main(keep: Path | None = None) -> int:
    console = Console()
    console.print("[bold]tinyraft demo[/]: a real 3-member cluster of sidecar and Module "
                  "processes on this machine.")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tinyraft-demo-") as tmp:
        tour = Tour(keep or Path(tmp), console)
        try:
            code = tour.run()
        except Exception as err:  # a step that could not even complete is a failed step
            console.print(f"[red]✘ the tour stopped: {err}[/]")
            code = 1
        finally:
            tour.cluster.close()
    console.print("[green]Every step checked out.[/]" if code == 0 else "[red]A step failed.[/]")
    return code
