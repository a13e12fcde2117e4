"""The apply pipeline: committed entries -> sessions -> the user's Module, and snapshots.

It runs beside the Raft loop, never inside it, so a slow or hung Module delays
answers but never heartbeats or elections. A snapshot file is the session table
followed by the Module's own snapshot bytes:

    b"TRS1" | u64 length of the session table | session table | Module bytes
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from tinyraft.core.sessions import Command, Run, SessionTable, Verdict, decode_runs
from tinyraft.core.types import Entry, EntryKind, Role, SnapshotMeta
from tinyraft.server.module_client import ModuleClient, ModuleOutOfSync, ModuleUnavailable
from tinyraft.storage import CompactedError, SnapshotInfo, SnapshotWriter

if TYPE_CHECKING:
    from tinyraft.server.member import Member

log = logging.getLogger("tinyraft.apply")

MAGIC = b"TRS1"
# Nobody waits for a follower's apply (unless a read does): it gathers committed
# entries this long into one Module call, and leaves the CPU to the leader's path.
FOLLOWER_BATCH_S = 0.02
_LEN = struct.Struct("<Q")


@dataclass(slots=True, frozen=True)
class Refused:
    """A command the cluster did not apply (its session is gone)."""

    reason: str


# The outcome of one command: the Module's result bytes, or why the cluster refused it.
type Result = bytes | Refused


@dataclass(slots=True)
class _Plan:
    """What a batch of committed entries asks of the Module, and how to answer."""

    # Per entry: (index, term, answers); an answer is a Result, or an int: the command's
    # slot in the Module's results. A range when every command of the entry is NEW (the
    # usual case): its results are those slots of the Module's, in one slice.
    answers: list[tuple[int, int, range | list[Result | int]]] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)  # the Module's commands: log indexes,
    commands: list[bytes] = field(default_factory=list)  # payloads,
    # and the NEW commands as runs, with each run's first slot: to fill the table in.
    fresh: list[tuple[Run, int]] = field(default_factory=list)
    count: int = 0
    # (client, seq) -> slot of each NEW command; built at the batch's first retry only.
    slots: dict[tuple[int, int], int] | None = None

    def add_new(self, run: Run, index: int) -> range:
        """Queue the run's commands, applied at log `index`, for the Module: their slots."""
        slot = len(self.commands)
        self.indexes.extend(itertools.repeat(index, len(run.payloads)))
        self.commands.extend(run.payloads)
        self.fresh.append((run, slot))
        if self.slots is not None:
            self._index(run, slot)
        return range(slot, len(self.commands))

    def slot_of(self, cmd: Command, cached: bytes) -> Result | int:
        """A retry committed in the same batch as its original gets the original's
        result (its slot), not the table's placeholder; an older one the cached result."""
        if self.slots is None:
            self.slots = {}
            for run, slot in self.fresh:
                self._index(run, slot)
        return self.slots.get((cmd.client, cmd.seq), cached)

    def _index(self, run: Run, slot: int) -> None:
        assert self.slots is not None
        for i in range(len(run.payloads)):
            self.slots[(run.client, run.first_seq + i)] = slot + i


def split_snapshot(chunks: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """Read the session table off the front of a snapshot stream."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        if len(buf) >= 12:
            break
    if buf[:4] != MAGIC:
        raise ValueError("not a tinyraft snapshot (bad magic)")
    (n,) = _LEN.unpack_from(buf, 4)
    for chunk in chunks:
        if len(buf) >= 12 + n:
            break
        buf += chunk
    sessions, rest = buf[12 : 12 + n], buf[12 + n :]

    def module_bytes() -> Iterator[bytes]:
        if rest:
            yield rest
        yield from chunks

    return sessions, module_bytes()


class Applier:
    def __init__(self, member: Member, module: ModuleClient) -> None:
        self.m = member
        self.module = module
        self.sessions = SessionTable()
        self.applied = 0  # what the Module has applied
        self.snapshot_index = 0
        self._bytes_since_snapshot = 0  # log bytes applied since the last snapshot
        self.queue: deque[list[Entry] | SnapshotInfo] = deque()
        self._queued = asyncio.Event()
        self._lock = asyncio.Lock()  # the Module's state must not move during a snapshot
        # A snapshot taken while applying: made durable and the log compacted beside the
        # applies that follow. One at a time.
        self._committing: asyncio.Task[None] | None = None
        self._rebuilding: asyncio.Task[None] | None = None
        self._applied_changed = asyncio.Event()
        self._hurry = asyncio.Event()
        self.module_ready = False

    # -- reads wait here -------------------------------------------------------------

    async def wait_applied(self, index: int) -> None:
        while self.applied < index:
            self._applied_changed.clear()
            self.hurry()
            await self._applied_changed.wait()

    def hurry(self) -> None:
        """Apply what is committed now, without gathering more first (a read waits for
        it, or this member has just become the leader)."""
        self._hurry.set()

    def _advance(self, index: int) -> None:
        self.applied = index
        self._applied_changed.set()
        self.m.metrics.applied_index.set(index)

    # -- start-up ----------------------------------------------------------------------

    async def start(self, snapshot: SnapshotInfo | None) -> None:
        """Bring the Module to the latest snapshot. A brand-new member first records
        the fresh Module's own empty state as snapshot 0, so that the Module can always
        be reset to a known state later (for example after it restarts)."""
        info = await self._retry(self.module.info)
        if snapshot is None:
            if info.applied_index != 0:
                raise RuntimeError(
                    f"the Module at {self.module.address} has already applied index "
                    f"{info.applied_index} but this member's data dir is empty: restart the "
                    "Module so it starts from an empty state"
                )
            snapshot = await self._take_snapshot(SnapshotMeta())
        await self._restore(snapshot)

    async def _retry(self, call: Callable[[], Awaitable[Any]]) -> Any:
        delay = 0.05
        while True:
            try:
                return await call()
            except ModuleUnavailable as err:
                log.warning("%s; retrying", err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- the loop ------------------------------------------------------------------------

    def enqueue(self, item: list[Entry] | SnapshotInfo) -> None:
        self.queue.append(item)
        self._queued.set()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if self._committing is not None:
                self._committing.cancel()

    async def _run(self) -> None:
        while True:
            if not self.queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            item = self.queue.popleft()
            if isinstance(item, SnapshotInfo):
                async with self._lock:  # not while a rebuild (after a read) restores too
                    await self._restore(item)
                continue
            entries = list(item)
            if self.m.core.role is not Role.LEADER:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), FOLLOWER_BATCH_S)
                self._hurry.clear()
            while self.queue and not isinstance(self.queue[0], SnapshotInfo):
                entries.extend(self.queue.popleft())  # type: ignore[arg-type]
            async with self._lock:
                await self._apply(entries, answer=True)
                self._bytes_since_snapshot += sum(len(e.data) for e in entries)
                if self._snapshot_due() and (meta := self._snapshot_meta()) is not None:
                    try:
                        started = time.perf_counter()
                        writer = await self._capture(meta)
                    except ModuleUnavailable as err:  # the applier must go on: try later
                        log.warning("snapshot postponed: %s", err)
                    else:
                        # A failure stops the member, as it did when this was inline.
                        rest = self._commit_and_compact(writer, meta, started)
                        self._committing = asyncio.create_task(self.m.vital("snapshot", rest))

    def _commit_in_flight(self) -> asyncio.Task[None] | None:
        committing = self._committing
        return None if committing is None or committing.done() else committing

    def _snapshot_due(self) -> bool:
        cfg = self.m.cfg
        return self._commit_in_flight() is None and (
            self.applied - self.snapshot_index >= cfg.snapshot_entries
            or self._bytes_since_snapshot >= cfg.snapshot_bytes
        )

    async def _apply(self, entries: list[Entry], answer: bool) -> None:
        entries = [e for e in entries if e.index > self.applied]
        if not entries:
            return
        started = time.perf_counter()
        plan = self._plan(entries)
        last = entries[-1].index
        while True:
            try:
                results = await self.module.apply(self.applied, plan.indexes, plan.commands, last)
                break
            except ModuleOutOfSync as err:
                log.warning("the Module restarted or diverged (%s): rebuilding it", err)
                await self._rebuild()  # also rewinds the sessions to before this batch
                return await self._apply(entries, answer)
            except ModuleUnavailable as err:
                self.module_ready = False
                if answer:
                    self.m.module_failed(entries, str(err))
                    answer = False
                log.error("%s; the member keeps running and retries", err)
                await asyncio.sleep(0.2)
                if self._superseded(last):
                    return
                with contextlib.suppress(ModuleUnavailable):
                    await self.module.info()  # it may be back as another version
        self.m.metrics.apply_duration.observe(time.perf_counter() - started)
        self.module_ready = True
        fill = self.sessions.fill_run
        for run, slot in plan.fresh:
            fill(run, results[slot : slot + len(run.payloads)])
        self.m.metrics.proposals_applied.inc(plan.count)
        self._advance(last)
        if answer:
            m = self.m
            for index, term, answers in plan.answers:
                if not m.is_waiting(index):  # only the leader has callers to answer
                    continue
                out: list[Result]
                if isinstance(answers, range):  # the Module's results, in one slice
                    out = cast(list[Result], results[answers.start : answers.stop])
                else:
                    out = [results[a] if isinstance(a, int) else a for a in answers]
                m.entry_applied(index, term, out)

    def _superseded(self, last: int) -> bool:
        """Whether a queued snapshot takes the Module past index `last`. If so, the
        entries queued before it go too: a member installs a snapshot only past its
        commit index, so it covers them, and applying them on a Module that missed
        the batch before would give reads a state that never existed."""
        for position, item in enumerate(self.queue):
            if isinstance(item, SnapshotInfo) and item.meta.index >= last:
                for _ in range(position):
                    self.queue.popleft()
                return True
        return False

    def _plan(self, entries: list[Entry]) -> _Plan:
        """Run the session table over the batch exactly as if each command were applied
        on its own (so every member reaches the same table, however it batches), noting
        which commands the Module must apply. Results are filled in afterwards."""
        plan = _Plan()
        for e in entries:
            normal = e.kind is EntryKind.NORMAL and e.data
            answers = self._plan_entry(e, plan) if normal else range(0)
            plan.answers.append((e.index, e.term, answers))
            plan.count += len(answers)
        return plan

    def _plan_entry(self, e: Entry, plan: _Plan) -> range | list[Result | int]:
        """Plan one entry's commands; their answers (a range of slots if all are NEW)."""
        sessions = self.sessions
        first = len(plan.commands)
        answers: list[Result | int] | None = None
        for run in decode_runs(e.data):
            if sessions.admit_run(run, e.index):  # all NEW: the usual case
                added = plan.add_new(run, e.index)
                if answers is not None:
                    answers.extend(added)
                continue
            if answers is None:
                answers = list(range(first, len(plan.commands)))
            for cmd in run.commands():
                verdict, cached = sessions.admit(cmd, e.index)
                if verdict is Verdict.NEW:
                    one = Run(cmd.client, cmd.seq, cmd.ack_below, [cmd.payload])
                    answers.extend(plan.add_new(one, e.index))
                elif verdict is Verdict.DUPLICATE:
                    answers.append(plan.slot_of(cmd, cached))
                else:
                    answers.append(Refused(f"session {verdict.value}: start a new Caller session"))
        return range(first, len(plan.commands)) if answers is None else answers

    # -- snapshots -----------------------------------------------------------------------

    async def snapshot_now(self) -> SnapshotInfo | None:
        """Snapshot what is applied now (the Admin API's Snapshot). None: the latest
        snapshot holds it already, and it is durable (one committing is waited for)."""
        while True:
            async with self._lock:  # no snapshot is captured meanwhile
                committing = self._commit_in_flight()
                if committing is None:
                    meta = self._snapshot_meta()
                    if meta is None:
                        return None
                    info = await self._take_snapshot(meta)
                    await self._compact(meta)
                    return info
            await asyncio.wait([committing])  # it needs the lock to finish

    def _snapshot_meta(self) -> SnapshotMeta | None:
        """What a snapshot of the applied state now would be; None if it has one."""
        core = self.m.core
        index = self.applied
        term = core.log.term(index)
        if term is None or index <= self.snapshot_index:
            return None
        return SnapshotMeta(index, term, core.log.config_at(index))

    async def _take_snapshot(self, meta: SnapshotMeta) -> SnapshotInfo:
        started = time.perf_counter()
        return await self._commit(await self._capture(meta), meta, started)

    async def _commit_and_compact(
        self, writer: SnapshotWriter, meta: SnapshotMeta, started: float
    ) -> None:
        """The rest of a snapshot taken while applying. The applies go on meanwhile:
        the Module's state is in the file already, and the file's fsync runs on a
        thread of its own, not the one the log's writes (the followers' acks) wait on."""
        await self._commit(writer, meta, started)
        async with self._lock:  # not while a rebuild replays the log it would compact
            await self._compact(meta)

    async def _capture(self, meta: SnapshotMeta) -> SnapshotWriter:
        """Write the session table and the Module's state into a new snapshot file, not
        yet durable. The caller holds the lock: the state must not move meanwhile."""
        writer = self.m.data_dir.snapshots.writer()
        try:
            sessions = self.sessions.encode()
            writer.write(MAGIC + _LEN.pack(len(sessions)) + sessions)
            async for index, chunk in self.module.snapshot():
                if index and index != meta.index:
                    raise ModuleUnavailable(
                        f"the Module snapshotted index {index}, expected {meta.index}"
                    )
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer

    async def _commit(
        self, writer: SnapshotWriter, meta: SnapshotMeta, started: float
    ) -> SnapshotInfo:
        try:
            info = await self.m.snapshot_storage(writer.commit, meta)
        except Exception:
            writer.abort()  # the commit failed (and ended) on its thread
            raise
        # Counted from the commit, not the capture: a failed commit is no snapshot.
        self.snapshot_index = max(self.snapshot_index, meta.index)
        self._bytes_since_snapshot = 0
        self.m.metrics.snapshots.inc()
        self.m.metrics.snapshot_duration.observe(time.perf_counter() - started)
        log.info("snapshot at index %d (%d bytes)", meta.index, info.size)
        return info

    async def _compact(self, meta: SnapshotMeta) -> None:
        """Drop the log up to a durable snapshot (the caller holds the lock)."""
        await self.m.compact_log(meta)
        core = self.m.core
        if meta.index > core.log.snapshot.index:
            core.compact(meta.index)
        self.m.kick()

    async def _restore(self, info: SnapshotInfo) -> None:
        sessions = await self._retry(lambda: self._push_snapshot(info))
        self.sessions = SessionTable()
        self.sessions.restore(sessions)
        self.snapshot_index = info.meta.index
        self._advance(info.meta.index)
        self.module_ready = True

    async def _push_snapshot(self, info: SnapshotInfo) -> bytes:
        """One attempt to stream a snapshot into the Module (a fresh read each time);
        returns the session table it carries."""
        await self.module.info()  # a Module that is restored may be a restarted version
        with self.m.data_dir.snapshots.reader(info) as reader:
            sessions, module_bytes = split_snapshot(iter(reader))
            await self.module.restore(info.meta.index, module_bytes)
        return sessions

    def rebuild_soon(self) -> None:
        """A read found the Module behind (it restarted): restore it in the background."""
        if self._rebuilding is None or self._rebuilding.done():
            self.module_ready = False
            self._rebuilding = asyncio.create_task(self._rebuild_locked())

    async def _rebuild_locked(self) -> None:
        async with self._lock:
            await self._rebuild()

    async def _rebuild(self) -> None:
        """The Module lost its state: restore the latest snapshot, replay the log. A
        leader's snapshot installed meanwhile compacts the log, and may prune the
        snapshot a retried restore is about to read: then the newest one is where to
        start again (it holds at least what the replay would have reached)."""
        target = self.applied
        while True:
            latest = self.m.data_dir.snapshots.latest()
            assert latest is not None, "a member always holds a snapshot (index 0 at least)"
            try:
                await self._restore(latest)
                if target > self.applied:
                    entries = await self.m.storage(
                        self.m.data_dir.log.entries, self.applied + 1, target + 1
                    )
                    await self._apply(entries, answer=False)
                return
            except (CompactedError, FileNotFoundError) as err:
                log.info("a snapshot arrived during the rebuild (%s); starting again", err)
