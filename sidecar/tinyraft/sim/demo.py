"""`tinyraft demo` (simulated): the five-minute tour on the deterministic simulator.

It narrates a 3-member cluster on virtual time: election, writes with sessions, a
leader crash, a retried command applied once, a learner added and promoted. Every
step is checked; the exit status is 0 only if all of them held."""

from __future__ import annotations

import json
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from tinyraft.core.sessions import Command, encode_batch
from tinyraft.core.types import Role
from tinyraft.sim.cluster import SimConfig, Simulation
from tinyraft.sim.network import FaultPlan
from tinyraft.sim.node import SimNode


class _Tour:
    def __init__(self, seed: int, console: Console) -> None:
        self.sim = Simulation(SimConfig(seed=seed, members=3, faults=FaultPlan()))
        self.console = console
        self.client = 42
        self.seq = 0
        self.failures = 0

    def run_until(self, done: Callable[[], object], limit_ms: int = 3000) -> bool:
        sched = self.sim.sched
        sched.run_until(sched.now + limit_ms, lambda: not done())
        return bool(done())

    def leader(self) -> SimNode | None:
        return self.sim.leader()

    def check(self, ok: bool, sentence: str) -> None:
        mark = "[green]✔[/green]" if ok else "[red]✘[/red]"
        self.console.print(f"  {mark} {sentence}")
        self.failures += not ok

    def put(self, key: str, value: str, seq: int | None = None) -> bytes | None:
        """Send one put through the session path and wait for its answer."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        answer: list[bytes] = []

        def reply(ok: bool, payload: object, _hint: str | None) -> None:
            if ok and isinstance(payload, bytes):
                answer.append(payload)

        payload = json.dumps({"op": "put", "key": key, "value": value}).encode()
        cmd = Command(self.client, seq, seq, payload)
        for _ in range(20):
            node = self.leader()
            if node is None:
                self.run_until(lambda: self.leader() is not None)
                continue
            node.write(encode_batch([cmd]), cmd, reply)
            if self.run_until(lambda: bool(answer), 500):
                return answer[0]
        return None

    def status(self) -> Table:
        table = Table(title=f"cluster at {self.sim.sched.now} ms (virtual time)")
        for col in ("member", "alive", "role", "term", "commit", "applied", "suffrage"):
            table.add_column(col)
        leader = self.leader()
        config = leader.raft.config if leader else None
        for node in self.sim.nodes.values():
            r = node.raft
            suffrage = "voter" if config and node.id in config.voters else "learner"
            table.add_row(
                node.id,
                str(node.alive),
                r.role.value,
                str(r.term),
                str(r.commit),
                str(r.applied),
                suffrage,
            )
        return table

    def tour(self) -> int:
        say = self.console.print
        say("[bold]1. Three members start and elect a leader.[/bold]")
        ok = self.run_until(lambda: self.leader() is not None)
        first = self.leader()
        self.check(
            ok and first is not None, f"{first.id if first else 'nobody'} was elected leader"
        )

        say("[bold]2. A client writes ten words through its session.[/bold]")
        words = [f"word{i}" for i in range(10)]
        answers = [self.put(w, "seen") for w in words]
        self.check(all(a == b'{"ok":true}' for a in answers), "all ten writes were acknowledged")

        say("[bold]3. The leader crashes (all unsaved state lost).[/bold]")
        assert first is not None
        first.crash()
        self.run_until(lambda: (n := self.leader()) is not None and n is not first)
        second = self.leader()
        self.check(
            second is not None and second is not first,
            f"{second.id if second else 'nobody'} took over in term {second.raft.term if second else '?'}",
        )
        self.put("after-crash", "seen")
        self.run_until(
            lambda: (
                all(n.sm.applied >= second.raft.commit for n in self.sim.nodes.values() if n.alive)
                if second
                else False
            )
        )
        kept = second is not None and all(second.sm.get(w) == "seen" for w in words)
        self.check(kept, "every acknowledged word is still there")

        say("[bold]4. The client retries its last command, as it would after a timeout.[/bold]")
        before = dict(second.sm.data) if second else {}
        again = self.put("after-crash", "seen", seq=self.seq)
        self.check(
            again == b'{"ok":true}' and second is not None and second.sm.data == before,
            "the retry got the cached answer and was not applied twice",
        )

        say("[bold]5. The crashed member restarts from its disk and catches up.[/bold]")
        first.start()
        first.pump()
        self.run_until(lambda: first.sm.applied >= second.raft.commit if second else False)
        self.check(
            all(first.sm.get(w) == "seen" for w in words), f"{first.id} has every word again"
        )

        say("[bold]6. A fourth member joins as a learner and is promoted.[/bold]")
        leader = self.leader()
        assert leader is not None
        new = self.sim._new_node()
        leader.raft.propose_config("add_learner", new)
        leader.pump()
        self.run_until(lambda: self.sim.nodes[new].sm.applied >= leader.raft.commit)
        leader.raft.propose_config("promote", new)
        leader.pump()
        self.run_until(
            lambda: (
                new in leader.raft.config.voters
                and leader.raft.commit >= leader.raft.pending_config_index
            )
        )
        self.check(
            new in leader.raft.config.voters and leader.raft.role is Role.LEADER,
            f"{new} is now a voter; the cluster has {len(leader.raft.config.voters)} voters",
        )
        self.console.print(self.status())
        return 0 if self.failures == 0 else 1


def main(seed: int) -> int:
    console = Console()
    console.print(
        "[bold]tinyraft demo[/bold] — a simulated 3-member cluster on virtual time "
        "(the real local cluster arrives with `tinyraft local`)."
    )
    code = _Tour(seed, console).tour()
    console.print(
        "[green]Every step checked out.[/green]" if code == 0 else "[red]A step failed.[/red]"
    )
    return code
