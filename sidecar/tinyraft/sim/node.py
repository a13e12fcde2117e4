"""A simulated member: the real core, a disk that only keeps what was persisted, and
the kv state machine. It runs the same Ready loop the sidecar runs, with the disk
write taking virtual time so that messages, ticks and crashes land in between."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tinyraft.core.raft import Options, Raft
from tinyraft.core.sessions import Command
from tinyraft.core.types import (
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
)
from tinyraft.sim.kv import KvMachine


@dataclass
class Disk:
    """What survives a crash."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes = b""
    entries: list[Entry] = field(default_factory=list)

    def persist(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot.meta
            self.snapshot_data = rd.snapshot.payload
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            base = self.snapshot.index + 1 if self.snapshot else 1
            del self.entries[max(first - base, 0) :]
            self.entries.extend(rd.entries)

    def compact(self, meta: SnapshotMeta, data: bytes) -> None:
        base = self.snapshot.index + 1 if self.snapshot else 1
        del self.entries[: meta.index - base + 1]
        self.snapshot, self.snapshot_data = meta, data


# Replies to clients: (ok, payload-or-error, leader hint)
Reply = Callable[[bool, object, str | None], None]


class SimNode:
    def __init__(
        self,
        member: str,
        options: Options,
        seed: int,
        raft_class: type[Raft],
        hooks: NodeHooks,
        snapshot_every: int,
    ) -> None:
        self.id = member
        self.options = options
        self.seed = seed
        self.raft_class = raft_class
        self.hooks = hooks
        self.snapshot_every = snapshot_every
        self.disk = Disk()
        self.alive = False
        self.busy = False
        self.incarnation = 0
        self.raft: Raft
        self.sm = KvMachine()
        self.start()

    def start(self) -> None:
        """Boot (or reboot) from the disk alone."""
        self.incarnation += 1
        d = self.disk
        self.sm = KvMachine()
        if d.snapshot is not None:
            self.sm.restore(d.snapshot_data)
        rng = random.Random(f"{self.seed}/{self.id}/{self.incarnation}")
        self.raft = self.raft_class(
            self.options, rng, d.hard_state, d.snapshot, list(d.entries), applied=self.sm.applied
        )
        self.alive = True
        self.busy = False
        self.writes: dict[int, tuple[int, Command, Reply]] = {}  # index -> (term, command, reply)
        self.reads: dict[int, tuple[str, Reply]] = {}  # read context -> (key, reply)
        self.reads_at: list[tuple[int, str, Reply]] = []  # released reads awaiting apply
        self.seen_commit = self.raft.commit

    def crash(self) -> None:
        self.alive = False
        self.busy = False  # the in-flight disk write is lost with the process

    # -- client requests --------------------------------------------------------------

    def write(self, data: bytes, cmd: Command, reply: Reply) -> None:
        try:
            index = self.raft.propose(data)
        except Exception as err:  # ProposalError: answer with a leader hint
            reply(False, type(err).__name__, getattr(err, "leader", self.raft.leader))
            return
        self.writes[index] = (self.raft.term, cmd, reply)

    def read(self, context: int, key: str, lease: bool, reply: Reply) -> None:
        self.reads[context] = (key, reply)
        self.raft.read_index(context, lease=lease)

    # -- the Ready loop -----------------------------------------------------------------

    def pump(self) -> None:
        if not self.alive or self.busy or not self.raft.has_ready():
            return
        raft = self.raft
        if raft.commit > self.seen_commit:
            self.hooks.commit(self.id, raft, self.seen_commit)
            self.seen_commit = raft.commit
        rd = raft.ready()
        if rd.role is Role.LEADER:
            self.hooks.elected(self.id, raft)
        elif rd.role is not None and self.writes:
            # Like the sidecar: a deposed leader tells its waiting clients to retry.
            waiting, self.writes = self.writes, {}
            for _, _, reply in waiting.values():
                reply(False, "leadership lost", raft.leader)
        if raft.role is Role.LEADER:
            self.hooks.leader_log(self.id, raft)
        for m in rd.messages_now:
            self.hooks.send(self, m)
        self.busy = True
        incarnation = self.incarnation
        self.hooks.disk_write(lambda: self._persisted(rd, incarnation))

    def _persisted(self, rd: Ready, incarnation: int) -> None:
        if not self.alive or incarnation != self.incarnation:
            return  # crashed meanwhile: this write never reached the disk
        self.disk.persist(rd)
        if rd.snapshot is not None:
            self.sm.restore(rd.snapshot.payload)
            self.writes.clear()
        if rd.entries:
            self.hooks.appended(self.id, rd.entries, self.raft)
        for m in rd.messages:
            self.hooks.send(self, m)
        for entry in rd.committed:
            self._apply(entry)
        for rs in rd.reads:
            self._released(rs)
        self._serve_reads()
        self.raft.advance(rd)
        self.busy = False
        self._maybe_snapshot()
        self.pump()

    def _apply(self, entry: Entry) -> None:
        self.hooks.apply(self.id, entry)
        results = self.sm.apply(entry)
        waiter = self.writes.pop(entry.index, None)
        if waiter is None:
            return
        term, cmd, reply = waiter
        if term != entry.term:
            reply(False, "lost", self.raft.leader)  # another leader's entry took its place
            return
        for c, result in results:
            if (c.client, c.seq) == (cmd.client, cmd.seq):
                reply(True, result, None)

    def _released(self, rs: ReadState) -> None:
        waiter = self.reads.pop(rs.context, None)
        if waiter is None:
            return
        key, reply = waiter
        if rs.index == 0:
            reply(False, "read failed", self.raft.leader)
        else:
            self.reads_at.append((rs.index, key, reply))

    def _serve_reads(self) -> None:
        if not self.reads_at:
            return
        keep = []
        for index, key, reply in self.reads_at:
            if self.sm.applied >= index:
                reply(True, self.sm.get(key), None)
            else:
                keep.append((index, key, reply))
        self.reads_at = keep

    def _maybe_snapshot(self) -> None:
        raft = self.raft
        if raft.applied - raft.log.snapshot.index < self.snapshot_every:
            return
        raft.compact(raft.applied)
        self.disk.compact(raft.log.snapshot, self.sm.snapshot())

    def snapshot_message(self, m: InstallSnapshot) -> InstallSnapshot:
        """Attach the latest snapshot: the core may have compacted again since it
        queued the message, and a newer snapshot serves the follower just as well."""
        snap = self.disk.snapshot
        assert snap is not None and snap.index >= m.meta.index
        return InstallSnapshot(m.term, m.src, m.dst, snap, self.disk.snapshot_data)

    def deliver(self, m: Message) -> None:
        if self.alive:
            self.raft.step(m)
            self.pump()


class NodeHooks:
    """What a node tells the cluster: the checker and the network hang off this."""

    def send(self, node: SimNode, m: Message) -> None:
        raise NotImplementedError

    def disk_write(self, done: Callable[[], None]) -> None:
        raise NotImplementedError

    def elected(self, member: str, raft: Raft) -> None: ...
    def leader_log(self, member: str, raft: Raft) -> None: ...
    def appended(self, member: str, entries: list[Entry], raft: Raft) -> None: ...
    def commit(self, member: str, raft: Raft, old: int) -> None: ...
    def apply(self, member: str, entry: Entry) -> None: ...
