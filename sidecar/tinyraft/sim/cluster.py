"""One seeded simulation: a cluster of real cores on virtual time under faults, a kv
workload from clients with sessions, safety checked after every event, the history
checked for linearizability at the end, and liveness checked once faults stop."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tinyraft.core.raft import Options, Raft
from tinyraft.core.sessions import Command, encode_batch
from tinyraft.core.types import Configuration, Entry, InstallSnapshot, Message, ProposalError, Role
from tinyraft.sim.linearizability import Operation, check_kv
from tinyraft.sim.network import FaultPlan, Network, Scheduler
from tinyraft.sim.node import NodeHooks, SimNode
from tinyraft.sim.safety import SafetyChecker, SafetyViolation

TICK_MS = 10


@dataclass
class SimConfig:
    seed: int
    members: int = 3
    clients: int = 6
    keys: int = 4
    fault_ms: int = 3000  # faults happen during this window
    settle_ms: int = 3000  # then everything heals; the cluster must finish all work in it
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    faults: FaultPlan | None = None  # None: drawn from the seed
    raft_class: type[Raft] = Raft


@dataclass
class SimResult:
    seed: int
    members: int
    ok: bool
    operations: int
    linearizable: bool
    violation: str = ""
    elapsed_s: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)

    def replay_command(self) -> str:
        return f"tinyraft sim --seed {self.seed} --members {self.members} --verbose"


class _Client:
    """A sequential client with a session: one operation at a time, retried with the
    same sequence number on timeouts and redirects, as the real Caller does."""

    def __init__(self, sim: Simulation, number: int) -> None:
        self.sim = sim
        self.number = number
        self.client_id = sim.rng.getrandbits(63) + 1
        self.seq = 0
        self.unanswered: set[int] = set()  # sequences sent but never answered
        self.target: str | None = None
        self.op: dict[str, object] | None = None
        self.attempt = 0
        self.tries = 0

    def next_op(self) -> None:
        sim = self.sim
        if sim.sched.now >= sim.end_ms - 1500:
            return  # the last operations must finish before the run ends
        rng = sim.rng
        key = f"k{rng.randrange(sim.cfg.keys)}"
        kind = rng.choices(["put", "get", "cas"], [4, 4, 2])[0]
        op: dict[str, object] = {"op": kind, "key": key, "call": sim.sched.now}
        if kind == "put":
            op["value"] = f"v{rng.getrandbits(20)}"
        elif kind == "cas":
            op["expect"] = rng.choice([None, *sim.values_seen.get(key, [])[-2:]])
            op["value"] = f"v{rng.getrandbits(20)}"
        if kind != "get":
            self.seq += 1
            op["seq"] = self.seq
            self.unanswered.add(self.seq)
            if isinstance(op["value"], str):
                sim.values_seen.setdefault(key, []).append(op["value"])
        op["lease"] = kind == "get" and rng.random() < 0.2
        self.op = op
        self.tries = 0
        self.send()

    def send(self) -> None:
        sim, op = self.sim, self.op
        assert op is not None
        self.attempt += 1  # unique per client, so late replies to old attempts are ignored
        self.tries += 1
        if self.tries > 15:
            self.finish(None, done=False)  # give up: the outcome stays unknown
            return
        members = sim.client_targets()
        target = self.target if self.target in sim.nodes else sim.rng.choice(members)
        if op["op"] == "get" and sim.rng.random() < 0.3:
            target = sim.rng.choice(members)  # a follower read now and then
        attempt = self.attempt
        node = sim.nodes[target]
        # ack_below: every result below it was received, so it can be forgotten.
        ack_below = min(self.unanswered, default=self.seq + 1)

        def reply(ok: bool, payload: object, hint: str | None) -> None:
            sim.sched.after(sim.delay(), lambda: self.on_reply(attempt, ok, payload, hint))

        def arrive() -> None:
            if not node.alive:
                return
            if op["op"] == "get":
                sim.read_context += 1
                node.read(sim.read_context, str(op["key"]), bool(op["lease"]), reply)
            else:
                payload = {k: op[k] for k in ("op", "key", "value", "expect") if k in op}
                seq = int(str(op["seq"]))
                cmd = Command(self.client_id, seq, ack_below, json.dumps(payload).encode())
                node.write(encode_batch([cmd]), cmd, reply)

        sim.sched.after(sim.delay(), arrive)
        sim.sched.after(300, lambda: self.on_timeout(attempt))

    def on_reply(self, attempt: int, ok: bool, payload: object, hint: str | None) -> None:
        if attempt != self.attempt or self.op is None:
            return
        if ok:
            self.finish(payload)
            return
        self.target = hint
        # Back off like the real Caller, so a leaderless moment does not burn every try.
        self.sim.sched.after(min(5 << self.tries, 200), lambda: self.retry(attempt))

    def on_timeout(self, attempt: int) -> None:
        if attempt == self.attempt and self.op is not None:
            self.target = None
            self.retry(attempt)

    def retry(self, attempt: int) -> None:
        if attempt == self.attempt and self.op is not None:
            self.send()

    def finish(self, payload: object, done: bool = True) -> None:
        op, sim = self.op, self.sim
        assert op is not None
        self.op = None
        if done and "seq" in op:
            self.unanswered.discard(int(str(op["seq"])))
        output: object = None
        if done and op["op"] == "get":
            output = payload
        elif done and op["op"] == "cas":
            answer = json.loads(payload)  # type: ignore[arg-type]
            output = (answer["ok"], answer["value"])
        sim.history.append(
            Operation(
                client=self.number,
                call=float(str(op["call"])),
                ret=float(sim.sched.now) if done else None,
                op=str(op["op"]),
                key=str(op["key"]),
                value=op.get("value"),  # type: ignore[arg-type]
                expect=op.get("expect"),  # type: ignore[arg-type]
                output=output,
            )
        )
        sim.sched.after(sim.rng.randint(0, 20), self.next_op)


class Simulation(NodeHooks):
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.plan = cfg.faults or FaultPlan.random(self.rng)
        self.sched = Scheduler()
        self.net = Network(self.sched, self.rng, self.plan)
        self.checker = SafetyChecker()
        self.options: Callable[[str], Options] = lambda m: Options(
            m,
            election_ticks=cfg.election_ticks,
            heartbeat_ticks=cfg.heartbeat_ticks,
            max_inflight=8,
            max_msg_bytes=4096,
        )
        self.snapshot_every = self.rng.choice([20, 50, 200])
        self.nodes: dict[str, SimNode] = {}
        self.next_member = 0
        self.history: list[Operation] = []
        self.values_seen: dict[str, list[str]] = {}
        self.read_context = 0
        self.end_ms = cfg.fault_ms + cfg.settle_ms
        self.log: list[str] = []
        self.stats = {
            "crashes": 0,
            "partitions": 0,
            "config_changes": 0,
            "transfers": 0,
            "elections": 0,
            "snapshots_sent": 0,
        }
        voters = [self._new_node() for _ in range(cfg.members)]
        config = Configuration(frozenset(voters))
        for m in voters:
            self.nodes[m].raft.bootstrap(config)
            self.nodes[m].pump()

    # -- hooks from nodes -------------------------------------------------------------

    def send(self, node: SimNode, m: Message) -> None:
        if isinstance(m, InstallSnapshot):
            m = node.snapshot_message(m)
            self.stats["snapshots_sent"] += 1
        dst = self.nodes.get(m.dst)
        if dst is None:
            return

        def lost() -> None:
            if isinstance(m, InstallSnapshot) and node.alive:
                node.raft.report_snapshot(m.dst, False)  # the sender sees its stream fail
                node.pump()

        self.net.send(m.src, m.dst, lambda: dst.deliver(m), lost)

    def disk_write(self, done: Callable[[], None]) -> None:
        self.sched.after(self.rng.choice([0, 0, 1, 2]), done)

    def elected(self, member: str, raft: Raft) -> None:
        self.stats["elections"] += 1
        self.trace(f"{member} leads term {raft.term}")
        self.checker.elected(member, raft.term, raft.log)

    def leader_log(self, member: str, raft: Raft) -> None:
        self.checker.leader_log(member, raft.term, raft.log)

    def appended(self, member: str, entries: list[Entry], raft: Raft) -> None:
        self.checker.appended(member, entries, raft.log)

    def commit(self, member: str, raft: Raft, old: int) -> None:
        self.checker.commit(member, raft.log, old, raft.commit)

    def apply(self, member: str, entry: Entry) -> None:
        self.checker.apply(member, entry)

    # -- faults and operations ---------------------------------------------------------

    def delay(self) -> int:
        return self.rng.randint(1, self.net.plan.max_delay_ms)

    def trace(self, line: str) -> None:
        self.log.append(f"{self.sched.now:>6}ms {line}")

    def _new_node(self) -> str:
        member = f"n{self.next_member}"
        self.next_member += 1
        self.nodes[member] = SimNode(
            member,
            self.options(member),
            self.cfg.seed,
            self.cfg.raft_class,
            self,
            self.snapshot_every,
        )
        phase = self.rng.randrange(TICK_MS)
        self.sched.after(phase, lambda: self._tick(member))
        return member

    def _tick(self, member: str) -> None:
        node = self.nodes[member]
        if node.alive:
            node.raft.tick()
            node.pump()
        self.sched.after(TICK_MS, lambda: self._tick(member))

    def client_targets(self) -> list[str]:
        """Where clients send requests: the members of the newest configuration, as a
        Kubernetes Service would list them (removed members linger, but not in it)."""
        # A compacted log holds no config entry: its config is the snapshot's, as of the
        # snapshot's index (else a removed member's stale log would look newest).
        newest = max(
            self.nodes.values(),
            key=lambda n: (n.raft.log.last_config_index() or n.raft.log.snapshot.index, n.id),
        )
        members = sorted(newest.raft.config.members & self.nodes.keys())
        return members or sorted(self.nodes)

    def leader(self) -> SimNode | None:
        leaders = [n for n in self.nodes.values() if n.alive and n.raft.role is Role.LEADER]
        return max(leaders, key=lambda n: n.raft.term, default=None)

    def _chaos(self) -> None:
        if self.sched.now >= self.cfg.fault_ms:
            return
        rng, plan = self.rng, self.plan
        action = rng.choice(["crash", "partition", "config", "transfer", "nothing"])
        members = sorted(self.nodes)
        if action == "crash" and plan.crashes:
            node = self.nodes[rng.choice(members)]
            if node.alive:
                self.stats["crashes"] += 1
                self.trace(f"crash {node.id}")
                node.crash()
                self.sched.after(rng.randint(50, 800), lambda: self._restart(node))
        elif action == "partition" and plan.partitions:
            self.stats["partitions"] += 1
            self.net.partition(members)
            self.trace(f"partition {self.net.side}")
            self.sched.after(rng.randint(100, 1000), self.net.heal)
        elif action == "config" and plan.membership:
            self._change_membership()
        elif action == "transfer" and plan.transfers:
            leader = self.leader()
            if leader is not None:
                target = rng.choice(sorted(leader.raft.config.voters))
                try:
                    leader.raft.transfer_leadership(target)
                    self.stats["transfers"] += 1
                    self.trace(f"transfer {leader.id} -> {target}")
                    leader.pump()
                except ProposalError:
                    pass
        self.sched.after(rng.randint(50, 400), self._chaos)

    def _restart(self, node: SimNode) -> None:
        if not node.alive:
            self.trace(f"restart {node.id}")
            node.start()
            node.pump()

    def _change_membership(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        raft, rng = leader.raft, self.rng
        config = raft.config
        caught_up = [
            m
            for m in sorted(config.learners)
            if m in raft.progress and raft.progress[m].match >= raft.commit
        ]
        try:
            if caught_up:
                op, member = "promote", caught_up[0]
            elif len(config.voters) < self.cfg.members + 1 and rng.random() < 0.6:
                op, member = "add_learner", self._new_node()
            elif len(config.voters) > 2:
                op, member = "remove", rng.choice(sorted(config.voters))
            else:
                return
            raft.propose_config(op, member)
        except ProposalError:
            return
        self.stats["config_changes"] += 1
        self.trace(f"{op} {member} via {leader.id}")
        leader.pump()

    def _heal(self) -> None:
        self.trace("faults stop; everything heals")
        self.net.heal()
        self.net.plan = self.plan.calm()
        for node in self.nodes.values():
            if not node.alive:
                node.start()
                node.pump()

    # -- the run ---------------------------------------------------------------------

    def run(self) -> SimResult:
        started = time.perf_counter()
        cfg = self.cfg
        self.sched.after(200, self._chaos)
        self.sched.at(cfg.fault_ms, self._heal)
        clients = [_Client(self, i) for i in range(cfg.clients)]
        for c in clients:
            self.sched.after(self.rng.randint(0, 50), c.next_op)
        violation = ""
        try:
            self.sched.run_until(self.end_ms, lambda: True)
            violation = self._liveness(clients)
        except SafetyViolation as err:
            violation = str(err)
        linearizable = False
        if not violation:
            result = check_kv(self.history, budget_s=30.0)
            linearizable = result.ok
            if not result.ok:
                violation = f"linearizability: {result.explanation}"
        return SimResult(
            seed=cfg.seed,
            members=cfg.members,
            ok=not violation,
            operations=len(self.history),
            linearizable=linearizable,
            violation=violation,
            elapsed_s=time.perf_counter() - started,
            stats=self.stats,
        )

    def _liveness(self, clients: list[_Client]) -> str:
        """After faults stop, a leader must exist and no operation may be left hanging
        or abandoned (the settle window is the bound, in virtual time)."""
        heal = self.cfg.fault_ms
        if self.leader() is None:
            return f"liveness: no leader {self.cfg.settle_ms}ms after faults stopped"
        for c in clients:
            if c.op is not None:
                return f"liveness: client {c.number} still has an operation pending at the end"
        given_up = [op for op in self.history if op.ret is None and op.call >= heal]
        if given_up:
            return f"liveness: {len(given_up)} operations started after healing never finished"
        finished_after = {
            op.client for op in self.history if op.ret is not None and op.call >= heal
        }
        if len(finished_after) < len(clients):
            return "liveness: some client completed no operation after faults stopped"
        return ""


def run_seed(
    seed: int, members: int, raft_class: type[Raft] = Raft, verbose: bool = False
) -> SimResult:
    sim = Simulation(SimConfig(seed=seed, members=members, raft_class=raft_class))
    result = sim.run()
    if verbose:
        print("\n".join(sim.log))
    return result
