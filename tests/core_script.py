"""A scripted cluster of real Raft cores, in the spirit of etcd-io/raft's interaction tests.

Each member is a `Raft` with an in-memory disk that keeps only what a Ready told it to
persist, and a state machine that is the list of entries applied so far. The network is
a visible list of messages in flight: a test delivers, drops or inspects them, so every
step of a scenario is explicit. Nothing here ticks or delivers on its own.

    c = Cluster.bootstrap("a b c")
    c.campaign("a")
    c.stabilize()
    assert c.leader() == "a"
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tinyraft.core import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Message,
    Options,
    Raft,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
)

Kinds = type[Message] | tuple[type[Message], ...] | None


@dataclass
class Disk:
    """What survives a crash."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    snapshot_data: tuple[Entry, ...] = ()  # the state machine at snapshot.index
    entries: list[Entry] = field(default_factory=list)  # from snapshot.index + 1


class Member:
    def __init__(self, name: str, options: Options, seed: int) -> None:
        self.name, self.options, self.seed, self.disk, self.incarnation = (
            name,
            options,
            seed,
            Disk(),
            0,
        )
        self.start()

    def start(self) -> None:
        """Boot (or reboot) from the disk alone."""
        self.incarnation += 1
        self.alive = True
        self.pending: Ready | None = None  # a Ready whose disk write has not finished
        self.applied: list[Entry] = list(self.disk.snapshot_data)  # the state machine
        self.reads: list[ReadState] = []
        d = self.disk
        rng = random.Random(f"{self.seed}/{self.name}/{self.incarnation}")
        self.raft = Raft(
            self.options, rng, d.hard_state, d.snapshot, list(d.entries), len(self.applied)
        )

    def persist(self, rd: Ready) -> None:
        d = self.disk
        if rd.hard_state is not None:
            d.hard_state = rd.hard_state
        if rd.snapshot is not None:
            d.snapshot, d.snapshot_data, d.entries = rd.snapshot.meta, rd.snapshot.payload, []
            self.applied = list(rd.snapshot.payload)
        if rd.entries:
            del d.entries[max(rd.entries[0].index - d.snapshot.index - 1, 0) :]
            d.entries.extend(rd.entries)


def _match(m: Message, src: str | None, dst: str | None, kinds: Kinds) -> bool:
    return src in (None, m.src) and dst in (None, m.dst) and (not kinds or isinstance(m, kinds))


class Cluster:
    def __init__(self, seed: int = 0, **options: object) -> None:
        self.seed, self.options = seed, options
        self.members: dict[str, Member] = {}
        self.inflight: list[Message] = []  # the network, in send order
        self.sent: list[Message] = []  # every message ever sent, delivered or not
        self.isolated: set[str] = set()
        self.elected: list[tuple[int, str]] = []  # (term, member) each time one became leader

    @classmethod
    def bootstrap(
        cls, voters: str, learners: str = "", seed: int = 0, **options: object
    ) -> Cluster:
        c = cls(seed, **options)
        config = Configuration(frozenset(voters.split()), frozenset(learners.split()))
        for name in sorted(config.members):
            raft = c.add_member(name).raft
            raft.bootstrap(config)
            # A brand-new cluster has promised no leader a lease; the core's guard
            # (ignore votes for one election timeout after start) is meant for restarts.
            raft.lease_until = 0
        c.process_all()
        return c

    def add_member(self, name: str) -> Member:
        """A new, empty member (not bootstrapped: it learns the cluster from the leader)."""
        opts = Options(id=name, **self.options)  # type: ignore[arg-type]
        self.members[name] = Member(name, opts, self.seed)
        return self.members[name]

    # -- inputs ---------------------------------------------------------------------------

    def raft(self, name: str) -> Raft:
        return self.members[name].raft

    def tick(self, name: str, n: int = 1) -> None:
        for _ in range(n):
            self.raft(name).tick()
            self.process(name)

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for name in self.alive():
                self.raft(name).tick()
            self.process_all()

    def run(self, ticks: int) -> None:
        """Let time pass with a working network: tick everyone, then stabilize, per tick."""
        for _ in range(ticks):
            self.tick_all()
            self.stabilize()

    def heartbeat(self) -> None:
        """Let the leader's next heartbeat go round and settle: followers learn a new
        commit index with it (or with the next append; a commit alone sends nothing)."""
        leader = self.leader()
        assert leader is not None, "no leader to send a heartbeat"
        self.tick(leader, self.raft(leader).opts.heartbeat_ticks)
        self.stabilize()

    def campaign(self, name: str, pre_vote: bool = False) -> None:
        self.raft(name).campaign(pre_vote=pre_vote)
        self.process(name)

    def propose(self, name: str, data: bytes) -> int:
        return self.raft(name).propose(data)

    def read(self, name: str, context: int, lease: bool = False) -> None:
        self.raft(name).read_index(context, lease=lease)
        self.process(name)

    def step(self, name: str, msg: Message) -> None:
        self.raft(name).step(msg)
        self.process(name)

    def compact(self, name: str, index: int) -> None:
        m = self.members[name]
        m.raft.compact(index)
        del m.disk.entries[: index - m.disk.snapshot.index]
        m.disk.snapshot, m.disk.snapshot_data = m.raft.log.snapshot, tuple(m.applied[:index])

    # -- the Ready loop -------------------------------------------------------------------

    def ready(self, name: str) -> Ready:
        """Half a Ready loop: take the Ready and send messages_now. The disk write (and
        what follows it) waits for process(name); a crash before that loses it."""
        m = self.members[name]
        assert m.pending is None, f"{name} already has a Ready in progress"
        rd = m.pending = m.raft.ready()
        self._send(m, rd.messages_now)
        return rd

    def process(self, name: str) -> None:
        """Run name's Ready loop until it has nothing to do: persist, send, apply, advance."""
        m = self.members[name]
        while m.alive and (m.pending is not None or m.raft.has_ready()):
            rd = m.pending or self.ready(name)
            m.pending = None
            m.persist(rd)
            self._send(m, rd.messages)
            m.applied.extend(rd.committed)
            m.reads.extend(rd.reads)
            m.raft.advance(rd)
            if rd.role is Role.LEADER:
                self.elected.append((m.raft.term, name))

    def process_all(self) -> None:
        for name in self.alive():
            self.process(name)

    def stabilize(self, max_rounds: int = 1000) -> None:
        """Process every member and deliver every message until the cluster is quiet."""
        for _ in range(max_rounds):
            self.process_all()
            if not self.inflight:
                return
            self.deliver()
        raise AssertionError("the cluster did not stabilize")

    # -- the network ----------------------------------------------------------------------

    def _send(self, src: Member, msgs: list[Message]) -> None:
        for msg in msgs:
            if isinstance(msg, InstallSnapshot) and msg.payload is None:
                msg.payload = src.disk.snapshot_data  # the runtime attaches the snapshot
            self.sent.append(msg)
            if not {msg.src, msg.dst} & self.isolated:
                self.inflight.append(msg)

    def msgs(self, src: str | None = None, dst: str | None = None, kinds: Kinds = None) -> list:
        """Messages in flight matching the filter."""
        return [m for m in self.inflight if _match(m, src, dst, kinds)]

    def history(self, src: str | None = None, dst: str | None = None, kinds: Kinds = None) -> list:
        """Every message sent so far matching the filter (delivered, dropped or in flight)."""
        return [m for m in self.sent if _match(m, src, dst, kinds)]

    def drop(self, src: str | None = None, dst: str | None = None, kinds: Kinds = None) -> list:
        chosen = self.msgs(src, dst, kinds)
        self.inflight = [m for m in self.inflight if not any(m is x for x in chosen)]
        return chosen

    def deliver(
        self, src: str | None = None, dst: str | None = None, kinds: Kinds = None
    ) -> list[Message]:
        """Step the matching messages into their (live) receivers, then run the Ready
        loop of each receiver that is not in the middle of a disk write."""
        chosen = self.drop(src, dst, kinds)
        for msg in chosen:
            m = self.members.get(msg.dst)
            if m is not None and m.alive:
                m.raft.step(msg)
        for name in sorted({msg.dst for msg in chosen} & set(self.alive())):
            if self.members[name].pending is None:
                self.process(name)
        return chosen

    def isolate(self, *names: str) -> None:
        """Cut each named member off from everyone else (messages both ways are lost)."""
        self.isolated |= set(names)
        self.inflight = [m for m in self.inflight if not {m.src, m.dst} & self.isolated]

    def heal(self) -> None:
        self.isolated.clear()

    def crash(self, name: str) -> None:
        """Stop name, losing everything it had not persisted (including a pending Ready)."""
        m = self.members[name]
        m.alive, m.pending = False, None
        self.inflight = [msg for msg in self.inflight if msg.dst != name]

    def restart(self, name: str) -> None:
        self.members[name].start()
        self.process(name)

    # -- inspection -----------------------------------------------------------------------

    def alive(self) -> list[str]:
        return [n for n, m in sorted(self.members.items()) if m.alive]

    def leader(self) -> str | None:
        """The live leader of the highest term, if any."""
        leaders = [n for n in self.alive() if self.role(n) is Role.LEADER]
        return max(leaders, key=self.term, default=None)

    def role(self, name: str) -> Role:
        return self.raft(name).role

    def term(self, name: str) -> int:
        return self.raft(name).term

    def commit(self, name: str) -> int:
        return self.raft(name).commit

    def last_index(self, name: str) -> int:
        return self.raft(name).log.last_index

    def log_terms(self, name: str) -> list[int]:
        """The term of each entry in name's log, from its first (uncompacted) index."""
        log = self.raft(name).log
        return [log.term(i) or 0 for i in range(log.first_index, log.last_index + 1)]

    def applied(self, name: str) -> list[bytes]:
        """The commands name's state machine applied, in order."""
        return [e.data for e in self.members[name].applied if e.kind is EntryKind.NORMAL]

    def reads(self, name: str) -> list[ReadState]:
        return self.members[name].reads
