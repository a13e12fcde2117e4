"""One member at run time: the Raft loop around the pure core.

    tick/step/propose  ->  core.ready()  ->  send appends (leader, §10.2.1)
                       ->  persist (one transaction, one fsync)  ->  send the rest
                       ->  hand committed entries to the Applier  ->  core.advance()

Everything that arrived while the disk was busy is proposed as one batch next time
around: group commit falls out of the loop's shape."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tinyraft.core.raft import Options, Raft
from tinyraft.core.sessions import join_records
from tinyraft.core.types import (
    AppendEntries,
    AppendResponse,
    Configuration,
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    ProposalError,
    Ready,
    RequestVote,
    Role,
    SnapshotMeta,
    VoteResponse,
)
from tinyraft.server.applier import Applier, Result
from tinyraft.server.config import SidecarConfig
from tinyraft.server.metrics import Metrics
from tinyraft.server.module_client import ModuleClient
from tinyraft.server.tls import channel_credentials
from tinyraft.storage import DataDir, Recovered
from tinyraft.transport.peers import PeerTransport
from tinyraft.v1 import peer_pb2 as pb

log = logging.getLogger("tinyraft.member")
T = TypeVar("T")

MAX_ENTRY_BYTES = 1 << 20  # commands proposed together go into entries of at most this size
# A follower writes a batch up to this size on its event loop when the disk thread is
# idle (see _save); ~0.3 ms of fsync, where the thread's hand-off costs ~0.2 ms. Not
# while the last write took longer than INLINE_SAVE_MAX_S: a slow disk must not stall
# the loop (Status, health, the Module's applies).
INLINE_SAVE_BYTES = 64 << 10
INLINE_SAVE_MAX_S = 0.005
SNAPSHOT_CHUNK = 256 << 10


class Unavailable(Exception):
    """Retry, possibly at another member (the leader hint says where)."""

    def __init__(self, message: str, leader: str | None = None) -> None:
        super().__init__(message)
        self.leader = leader


class Overloaded(Exception):
    """Too much pending work: back off."""


@dataclass(slots=True)
class _Waiter:
    term: int
    started: float
    futures: list[tuple[asyncio.Future[list[Result]], int]] = field(default_factory=list)


class Member:
    def __init__(
        self,
        cfg: SidecarConfig,
        member_id: str,
        data_dir: DataDir,
        metrics: Metrics,
        recovered: Recovered,
    ) -> None:
        self.cfg = cfg
        self.id = member_id
        self.data_dir = data_dir
        self.metrics = metrics
        self.cluster_id = data_dir.identity.cluster_id
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="tinyraft-disk")  # one writer
        # The last job given to it: jobs run in order, so once it is done all are.
        self._last_disk_job: Future[Any] | None = None
        self._last_save_s = 0.0  # how long the last log write took, on whichever thread
        # Snapshot files commit on a thread of their own: their fsync must not hold up
        # the log's writes. One thread, so that commits to the store never overlap.
        self._snapshot_disk = ThreadPoolExecutor(1, thread_name_prefix="tinyraft-snapshots")
        self.module = ModuleClient(str(cfg.module))
        self.applier = Applier(self, self.module)
        self.transport = PeerTransport(
            member_id, self, self.address_of, channel_credentials(cfg.tls)
        )
        # The core exists from the start (Status answers while the Module is restored);
        # it runs only once start() has brought the Module to the snapshot.
        self.recovered = recovered
        snap = recovered.snapshot.meta if recovered.snapshot is not None else SnapshotMeta()
        self.core = Raft(
            self.options(), random.Random(), recovered.hard_state, snap, recovered.entries
        )
        self._kick = asyncio.Event()
        # (command records, how many commands, the caller's future), in arrival order
        self._pending: list[tuple[bytes, int, asyncio.Future[list[Result]]]] = []
        self._pending_count = 0
        self._waiters: dict[int, _Waiter] = {}
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._read_ids = itertools.count(1)
        self._votes: dict[str, asyncio.Future[Message]] = {}
        self._incoming_snapshot: Any = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._last_contact: dict[str, float] = {}
        self._sent_at: dict[str, tuple[int, float]] = {}
        self.started = False  # the Module is at the snapshot and the Raft loop runs
        self._next_tick = time.monotonic()
        self._pruning = False  # a background prune of the compacted log is running

    # -- start and stop ----------------------------------------------------------------

    def options(self) -> Options:
        return Options(
            self.id,
            election_ticks=self.cfg.election_ticks,
            heartbeat_ticks=self.cfg.heartbeat_ticks,
            max_msg_bytes=MAX_ENTRY_BYTES,
        )

    async def start(self) -> None:
        await self.applier.start(self.recovered.snapshot)
        self._publish()
        self.started = True
        self._tasks = [
            asyncio.create_task(self.vital("Raft loop", self._raft_loop()), name="raft-loop"),
            asyncio.create_task(self.vital("ticker", self._ticker()), name="ticker"),
            asyncio.create_task(self.vital("applier", self.applier.run()), name="applier"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.close()
        await self.module.close()
        self._disk.shutdown(wait=True)
        self._snapshot_disk.shutdown(wait=True)

    async def storage(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a storage call on the single disk thread (SQLite is used by one thread)."""
        job = self._last_disk_job = self._disk.submit(fn, *args)
        return await asyncio.wrap_future(job)

    async def snapshot_storage(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a snapshot store call (a commit) on the snapshot thread."""
        return await asyncio.wrap_future(self._snapshot_disk.submit(fn, *args))

    def _disk_idle(self) -> bool:
        return self._last_disk_job is None or self._last_disk_job.done()

    async def compact_log(self, meta: SnapshotMeta) -> None:
        """Compact the log to a snapshot, then free the old records in the background,
        in short steps: the Raft loop's appends, queued on the same disk thread, slip in
        between, and nobody waits for the pruning to end."""
        await self.storage(self.data_dir.log.compact, meta)
        if not self._pruning:
            self._pruning = True
            self._spawn(self._prune())

    async def _prune(self) -> None:
        try:
            while await self.storage(self.data_dir.log.prune):
                pass
        except Exception:  # the next append reports a broken store; this is housekeeping
            log.warning("pruning the compacted log failed", exc_info=True)
        finally:
            self._pruning = False

    def kick(self) -> None:
        self._kick.set()

    # -- the Raft loop -----------------------------------------------------------------

    async def _ticker(self) -> None:
        interval = self.cfg.heartbeat_ms / 1000
        self._next_tick = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(self._next_tick - time.monotonic(), 0))
            self._catch_up_clock()
            self.kick()
            self._publish()  # gauges once per tick, not once per batch

    def _catch_up_clock(self) -> None:
        """Tick the core once per heartbeat interval that has really passed. A process
        that was paused (SIGSTOP, a long GC, a frozen VM) must not wake up believing
        no time went by: its leader lease would outlive what its followers granted."""
        interval = self.cfg.heartbeat_ms / 1000
        now = time.monotonic()
        while now >= self._next_tick:
            self.core.tick()
            self._next_tick += interval

    async def _raft_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            self._propose_pending()
            while self.core.has_ready():
                await self._handle_ready()
                self._propose_pending()

    async def vital(self, what: str, loop: Coroutine[Any, Any, None]) -> None:
        """Run a loop the member cannot work without: if it fails, stop the member
        (a member that votes and acknowledges but never applies would hang its callers
        without a word)."""
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except Exception:
            log.critical("the %s failed; stopping this member", what, exc_info=True)
            self._fatal()

    def _fatal(self) -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)

    async def _handle_ready(self) -> None:
        core = self.core
        rd = core.ready()
        if rd.role is not None:
            self._role_changed(rd.role, rd.leader)
        self._send(rd.messages_now)
        if rd.snapshot is not None:
            await self._install_snapshot(rd.snapshot)
        # Committed entries are on disk already (from earlier writes). The leader hands
        # them on before this write, since its callers wait for the apply; a follower
        # answers the leader first, since nobody waits for its apply.
        apply_first = core.role is Role.LEADER
        if apply_first:
            self._hand_committed(rd.committed)
        if rd.hard_state is not None or rd.entries:
            await self._save(rd, inline=not apply_first)
        self._send(rd.messages)
        if not apply_first:
            self._hand_committed(rd.committed)
        for rs in rd.reads:
            fut = self._reads.pop(rs.context, None)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)
        core.advance(rd)
        self._changed.set()
        self._changed = asyncio.Event()

    async def _save(self, rd: Ready, inline: bool) -> None:
        """Make the core's state and entries durable before its messages go out.

        With `inline` (a member that is not the leader), a small write goes on this
        thread when the disk thread is idle (only this loop queues work on it, so it
        stays idle meanwhile) and the last write was quick: a follower's write is on the
        path of every command it acknowledges, the hand-off to the disk thread and back
        costs as much as the fsync, and the follower has nothing better to do than
        answer the leader. The leader writes in parallel with replication and keeps its
        loop for the answers."""
        args = (rd.hard_state, rd.entries, rd.must_sync and self.cfg.fsync)
        if (
            inline
            and self._disk_idle()
            and self._last_save_s <= INLINE_SAVE_MAX_S
            and sum(len(e.data) for e in rd.entries) <= INLINE_SAVE_BYTES
        ):
            self._timed_save(*args)
        else:
            await self.storage(self._timed_save, *args)

    def _timed_save(self, hard_state: HardState | None, entries: list[Entry], sync: bool) -> None:
        started = time.perf_counter()
        self.data_dir.log.save(hard_state, entries, sync)
        self._last_save_s = time.perf_counter() - started

    def _hand_committed(self, entries: list[Entry]) -> None:
        if entries:
            self.metrics.commit_index.set(entries[-1].index)
            self.applier.enqueue(entries)

    def _send(self, messages: list[Message]) -> None:
        if not messages:
            return
        out = []
        now = time.monotonic()
        for m in messages:
            if isinstance(m, VoteResponse):
                fut = self._votes.pop(m.dst, None)
                if fut is not None and not fut.done():
                    fut.set_result(m)
                    continue
            elif isinstance(m, InstallSnapshot):
                self._spawn(self._send_snapshot(m))
                continue
            elif isinstance(m, AppendEntries) and m.entries:
                self._sent_at.setdefault(m.dst, (m.entries[-1].index, now))
            out.append(m)
        self.transport.send(out)

    def _role_changed(self, role: Role, leader: str | None) -> None:
        log.info("now %s in term %d (leader: %s)", role.value, self.core.term, leader or "unknown")
        self.metrics.leader_changes.inc()
        if role is Role.LEADER:
            self.applier.hurry()
        else:
            for waiter in self._waiters.values():
                for fut, _ in waiter.futures:
                    if not fut.done():
                        fut.set_exception(
                            Unavailable("leadership changed; retry", self.leader_address())
                        )
            self._waiters.clear()

    def _publish(self) -> None:
        core, m = self.core, self.metrics
        m.term.set(core.term)
        m.has_leader.set(core.leader is not None)
        m.is_leader.set(core.role is Role.LEADER)
        m.is_learner.set(self.id in core.config.learners)
        m.commit_index.set(core.commit)
        m.members.labels("voter").set(len(core.config.voters))
        m.members.labels("learner").set(len(core.config.learners))
        m.proposals_pending.set(self._pending_count)
        # Only the leader knows the lag; a former leader's figures would stay frozen
        # (and keep alerts firing), and a removed peer's would linger: start afresh.
        m.peer_lag.clear()
        if core.role is Role.LEADER:
            for peer, pr in core.progress.items():
                if peer != self.id:
                    m.peer_lag.labels(peer).set(core.log.last_index - pr.match)

    # -- proposals ---------------------------------------------------------------------

    async def submit(self, records: bytes, count: int) -> list[Result]:
        """Replicate and apply `count` commands, encoded as records (sessions'
        encode_records / encode_run); leader only. Raises Unavailable / Overloaded."""
        core = self.core
        if core.role is not Role.LEADER:
            raise Unavailable("not the leader", self.leader_address())
        if self._pending_count + count > self.cfg.max_pending:
            self.metrics.proposals_failed.labels("overloaded").inc()
            raise Overloaded(f"more than {self.cfg.max_pending} commands pending; back off")
        fut: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._pending.append((records, count, fut))
        self._pending_count += count
        self.metrics.proposals_pending.set(self._pending_count)
        self.kick()
        try:
            return await fut
        finally:
            self._pending_count -= count

    def _propose_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        core = self.core
        now = time.perf_counter()
        start = 0
        while start < len(pending):
            end, size, count = start, 0, 0
            while end < len(pending) and (
                end == start or size + len(pending[end][0]) <= MAX_ENTRY_BYTES
            ):
                size += len(pending[end][0])
                count += pending[end][1]
                end += 1
            group = pending[start:end]
            start = end
            try:
                index = core.propose(join_records([r for r, _, _ in group], count))
            except ProposalError as err:
                self.metrics.proposals_failed.labels(type(err).__name__).inc()
                for _, _, fut in group:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self._waiters[index] = _Waiter(core.term, now, [(fut, n) for _, n, fut in group])

    def is_waiting(self, index: int) -> bool:
        """Whether callers wait for the results of the entry at index."""
        return index in self._waiters

    def entry_applied(self, index: int, term: int, results: list[Result]) -> None:
        waiter = self._waiters.pop(index, None)
        if waiter is None:
            return
        if waiter.term != term:
            for fut, _ in waiter.futures:
                if not fut.done():
                    fut.set_exception(Unavailable("another leader's entry replaced it; retry"))
            return
        self.metrics.proposals_committed.inc(len(results))
        self.metrics.commit_duration.observe(time.perf_counter() - waiter.started)
        pos = 0
        for fut, n in waiter.futures:
            if not fut.done():
                fut.set_result(results[pos : pos + n])
            pos += n

    def module_failed(self, entries: list[Entry], reason: str) -> None:
        for e in entries:
            waiter = self._waiters.pop(e.index, None)
            if waiter is not None:
                for fut, _ in waiter.futures:
                    if not fut.done():
                        fut.set_exception(Unavailable(f"committed, but {reason}; retry"))

    # -- reads -------------------------------------------------------------------------

    async def read_index(self, lease: bool, timeout: float) -> int:
        """An index that, once applied, makes a read linearizable."""
        ctx = next(self._read_ids)
        if lease:
            self._catch_up_clock()  # a lease is only as good as our idea of the time
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        self.core.read_index(ctx, lease=lease and self.core.role is Role.LEADER)
        self.kick()
        try:
            index = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Unavailable(
                "no leader confirmed the read in time; retry", self.leader_address()
            ) from None
        finally:
            self._reads.pop(ctx, None)
        if index == 0:
            raise Unavailable("leadership changed during the read; retry", self.leader_address())
        return index

    # -- membership --------------------------------------------------------------------

    async def change_membership(self, op: str, member: str, address: str | None = None) -> int:
        core = self.core
        if core.role is not Role.LEADER:
            raise Unavailable("not the leader", self.leader_address())
        index = core.propose_config(op, member, address)
        term = core.term
        self.kick()
        await self.wait_committed(index, term)
        return index

    async def wait_committed(self, index: int, term: int, timeout: float = 30.0) -> None:
        core = self.core
        await self.wait_until(lambda: core.commit >= index or core.term != term, timeout)
        if core.commit < index:
            raise Unavailable("leadership changed before the change committed; retry")
        if core.log.term(index) not in (term, None):
            raise Unavailable("the change was lost to a new leader; retry")

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait (re-checking after each turn of the Raft loop) until condition() holds;
        False if it still does not after timeout seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return True

    async def wait_for_leader(self, not_at: str | None, term: int, timeout: float) -> bool:
        """Wait until this member leads or knows a leader, other than the one at
        `not_at` in `term` (that one did not answer); False if none within timeout."""

        def known() -> bool:
            if self.core.role is Role.LEADER:
                return True
            address = self.leader_address()
            return address is not None and (address != not_at or self.core.term > term)

        return await self.wait_until(known, timeout)

    def address_of(self, member: str) -> str | None:
        return self.core.config.address(member)

    def leader_address(self) -> str | None:
        leader = self.core.leader
        return self.core.config.address(leader) if leader else None

    # -- peer handler ------------------------------------------------------------------

    def deliver(self, messages: list[Message]) -> None:
        now = time.monotonic()
        for m in messages:
            if m.dst != self.id:
                continue
            self._last_contact[m.src] = now
            if isinstance(m, AppendResponse) and m.success:
                sent = self._sent_at.get(m.src)
                if sent is not None and m.index >= sent[0]:
                    del self._sent_at[m.src]
                    self.metrics.peer_rtt.labels(m.src).observe(now - sent[1])
            self.core.step(m)
        self.kick()

    async def vote(self, request: RequestVote) -> Message | None:
        if request.dst != self.id:
            return None
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._votes[request.src] = fut
        self.core.step(request)
        self.kick()
        try:
            return await asyncio.wait_for(fut, self.cfg.election_ms / 1000)
        except TimeoutError:
            return None  # ignored (we follow a live leader): no answer
        finally:
            if self._votes.get(request.src) is fut:
                del self._votes[request.src]

    async def receive_snapshot(self, chunks: AsyncIterator[pb.SnapshotChunk]) -> None:
        writer = None
        header = None
        try:
            async for chunk in chunks:
                if header is None:
                    header = chunk
                    if header.cluster_id != self.cluster_id or header.dst != self.id:
                        raise ValueError("snapshot for another cluster or member")
                    writer = self.data_dir.snapshots.writer()
                assert writer is not None
                if chunk.data:
                    writer.write(chunk.data)
            if header is None or writer is None:
                return
            if writer.sha256 != header.sha256 or writer.size != header.size:
                raise ValueError("snapshot arrived damaged (checksum or size mismatch)")
            meta = SnapshotMeta(
                header.index, header.snapshot_term, Configuration.decode(header.config)
            )
            msg = InstallSnapshot(header.term, header.src, header.dst, meta, writer)
            self.core.step(msg)
            if self.core.snapshot_in is msg:
                if self._incoming_snapshot is not None:
                    self._incoming_snapshot.abort()
                self._incoming_snapshot = writer
                writer = None
            self.kick()
        finally:
            if writer is not None:
                writer.abort()

    async def _install_snapshot(self, m: InstallSnapshot) -> None:
        writer = m.payload
        if self._incoming_snapshot is writer:
            self._incoming_snapshot = None
        info = await self.snapshot_storage(writer.commit, m.meta)
        await self.compact_log(m.meta)
        self.applier.enqueue(info)
        self.metrics.snapshots_received.inc()
        log.info("installed a snapshot at index %d from %s", m.meta.index, m.src)

    async def _send_snapshot(self, m: InstallSnapshot) -> None:
        info = self.data_dir.snapshots.latest()
        try:
            if info is None:
                raise RuntimeError("no snapshot to send")
            reader = self.data_dir.snapshots.reader(info, SNAPSHOT_CHUNK)

            async def chunks() -> AsyncIterator[pb.SnapshotChunk]:
                yield pb.SnapshotChunk(
                    cluster_id=self.cluster_id,
                    term=m.term,
                    src=self.id,
                    dst=m.dst,
                    index=info.meta.index,
                    snapshot_term=info.meta.term,
                    config=info.meta.config.encode(),
                    size=info.size,
                    sha256=info.sha256,
                )
                with reader:
                    for data in reader:
                        yield pb.SnapshotChunk(data=data)

            await self.transport.send_snapshot(m.dst, chunks())
            self.metrics.snapshots_sent.inc()
            log.info("sent snapshot %d to %s", info.meta.index, m.dst)
        except Exception as err:
            log.warning("sending a snapshot to %s failed: %s", m.dst, err)
            self.core.report_snapshot(m.dst, False)
            self.kick()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    # -- bootstrap ---------------------------------------------------------------------

    def bootstrap(self) -> str:
        """Start a new cluster with this member as its only voter."""
        cluster_id = uuid.uuid4().hex
        self.adopt_cluster(cluster_id)
        config = Configuration(
            frozenset({self.id}), addresses=((self.id, str(self.cfg.advertise)),)
        )
        self.core.bootstrap(config)
        self.kick()
        return cluster_id

    def adopt_cluster(self, cluster_id: str) -> None:
        self.data_dir.set_cluster_id(cluster_id)
        self.cluster_id = cluster_id

    def last_contact(self, member: str) -> float | None:
        t = self._last_contact.get(member)
        return None if t is None else time.monotonic() - t
