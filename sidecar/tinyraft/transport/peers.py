"""Peer gRPC: long-lived streams that carry batches of core messages between members.

Sending never blocks the Raft loop: messages are queued per peer and a task per peer
drains the queue into one MessageBatch per write. A broken stream is re-opened with
back-off; what was queued meanwhile is dropped, which Raft tolerates (it retries).
Answers to a peer that holds a stream open to us travel back on that stream."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from tinyraft.core.types import Message, RequestVote, TimeoutNow
from tinyraft.transport.codec import from_proto, to_proto
from tinyraft.v1 import peer_pb2 as pb
from tinyraft.v1 import peer_pb2_grpc

log = logging.getLogger("tinyraft.transport")

MAX_QUEUED = 4096  # messages queued for one unreachable peer before the oldest are dropped
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # The serving side must accept those pings, or it answers GOAWAY too_many_pings.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    # gRPC's default reconnect backoff grows to 2 minutes, and a call made while a
    # channel waits to reconnect fails at once: a restarted peer must be reachable
    # again within a second, not after its peers' backoff runs out. (Not
    # min_reconnect_backoff_ms: it is also the connect timeout, too short for TLS
    # over a slow link.)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class PeerHandler(Protocol):
    """What the member does with peer traffic (implemented by server.member)."""

    cluster_id: str

    def deliver(self, messages: list[Message]) -> None: ...

    async def vote(self, request: RequestVote) -> Message | None: ...

    async def receive_snapshot(self, chunks: AsyncIterator[pb.SnapshotChunk]) -> None: ...


class _Link:
    """The outbound stream to one peer."""

    def __init__(self, transport: PeerTransport, member: str) -> None:
        self.transport = transport
        self.member = member
        self.queue: list[Message] = []
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"peer-link-{member}")

    def push(self, m: Message) -> None:
        self.queue.append(m)
        if len(self.queue) > MAX_QUEUED:
            del self.queue[: len(self.queue) - MAX_QUEUED]
        self.wake.set()

    async def _batches(self) -> AsyncIterator[pb.MessageBatch]:
        while True:
            await self.wake.wait()
            self.wake.clear()
            queued, self.queue = self.queue, []
            if queued:
                yield pb.MessageBatch(
                    cluster_id=self.transport.handler.cluster_id,
                    messages=[to_proto(m) for m in queued],
                )

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            address = self.transport.address_of(self.member)
            if address is None:
                # No longer in the configuration: end; a later send opens a new link.
                del self.transport._links[self.member]
                return
            try:
                stub = peer_pb2_grpc.PeerStub(self.transport.channel(address))
                call = stub.Stream(self._batches())
                async for batch in call:
                    backoff = 0.05
                    self.transport.receive(batch)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                log.debug("stream to %s (%s) broke: %s", self.member, address, err.code())
            except Exception:
                log.exception("stream to %s failed", self.member)
            self.queue.clear()  # stale by the time we reconnect; Raft resends
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


class FaultFile:
    """Test-only partitions: with TINYRAFT_TEST_FAULT_FILE set, the member drops all
    Raft traffic to and from the member ids listed in that file (one per line). It is
    re-read at most every 50 ms. Never set it in production."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._cut: frozenset[str] = frozenset()
        self._read_at = 0.0

    @staticmethod
    def from_env() -> FaultFile | None:
        path = os.environ.get("TINYRAFT_TEST_FAULT_FILE")
        return FaultFile(path) if path else None

    def cut(self, member: str) -> bool:
        now = time.monotonic()
        if now - self._read_at > 0.05:
            self._read_at = now
            try:
                with open(self.path) as f:
                    self._cut = frozenset(line.strip() for line in f if line.strip())
            except FileNotFoundError:
                self._cut = frozenset()
        return member in self._cut


class PeerTransport:
    def __init__(
        self,
        member_id: str,
        handler: PeerHandler,
        address_of: Callable[[str], str | None],
        channel_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.member_id = member_id
        self.handler = handler
        self.address_of = address_of
        self.credentials = channel_credentials
        self._links: dict[str, _Link] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Answers to a peer whose stream reached us go back on that stream (None: closed).
        self._return_paths: dict[str, asyncio.Queue[pb.MessageBatch | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.faults = FaultFile.from_env()

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            if self.credentials is not None:
                ch = grpc.aio.secure_channel(address, self.credentials, options=GRPC_OPTIONS)
            else:
                ch = grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)
            self._channels[address] = ch
        return ch

    def send(self, messages: list[Message]) -> None:
        by_peer: dict[str, list[Message]] = {}
        for m in messages:
            if self.faults is not None and self.faults.cut(m.dst):
                continue
            if isinstance(m, RequestVote):
                self._spawn(self._request_vote(m))
            elif isinstance(m, TimeoutNow):
                self._spawn(self._timeout_now(m))
            else:
                by_peer.setdefault(m.dst, []).append(m)
        for peer, msgs in by_peer.items():
            back = self._return_paths.get(peer)
            if back is not None:
                batch = pb.MessageBatch(
                    cluster_id=self.handler.cluster_id, messages=[to_proto(m) for m in msgs]
                )
                back.put_nowait(batch)
                continue
            link = self._links.get(peer)
            if link is None:
                link = self._links[peer] = _Link(self, peer)
            for m in msgs:
                link.push(m)

    def receive(self, batch: pb.MessageBatch) -> None:
        if batch.cluster_id != self.handler.cluster_id:
            log.warning(
                "dropped %d messages from cluster %r (this member belongs to %r)",
                len(batch.messages),
                batch.cluster_id,
                self.handler.cluster_id,
            )
            return
        try:
            msgs = [from_proto(p) for p in batch.messages]
        except ValueError as err:
            log.warning("dropped a malformed peer batch: %s", err)
            return
        if self.faults is not None:
            msgs = [m for m in msgs if not self.faults.cut(m.src)]
        self.handler.deliver(msgs)

    async def _request_vote(self, m: RequestVote) -> None:
        address = self.address_of(m.dst)
        if address is None:
            return
        stub = peer_pb2_grpc.PeerStub(self.channel(address))
        try:
            reply = await stub.RequestVote(
                to_proto(m), timeout=2.0, metadata=self._cluster_metadata()
            )
        except grpc.aio.AioRpcError as err:
            log.debug("vote request to %s failed: %s", m.dst, err.code())
            return
        if reply.WhichOneof("body") is not None:
            self.handler.deliver([from_proto(reply)])

    async def _timeout_now(self, m: TimeoutNow) -> None:
        address = self.address_of(m.dst)
        if address is None:
            return
        stub = peer_pb2_grpc.PeerStub(self.channel(address))
        request = to_proto(m)
        try:
            await stub.TimeoutNow(request, timeout=2.0, metadata=self._cluster_metadata())
        except grpc.aio.AioRpcError as err:
            log.info("TimeoutNow to %s failed: %s", m.dst, err.code())

    def _cluster_metadata(self) -> tuple[tuple[str, str]]:
        return (("tinyraft-cluster", self.handler.cluster_id),)

    async def send_snapshot(self, member: str, chunks: AsyncIterator[pb.SnapshotChunk]) -> None:
        """Stream a snapshot; raises on failure so the caller can report it to the core."""
        address = self.address_of(member)
        if address is None or (self.faults is not None and self.faults.cut(member)):
            raise ConnectionError(f"member {member} is unreachable")
        stub = peer_pb2_grpc.PeerStub(self.channel(address))
        await stub.InstallSnapshot(chunks, timeout=600.0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for link in self._links.values():
            link.task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for ch in self._channels.values():
            await ch.close()

    # -- the serving side --------------------------------------------------------------

    def servicer(self) -> peer_pb2_grpc.PeerServicer:
        return _PeerService(self)


def _cluster_of(context: grpc.aio.ServicerContext) -> str:
    return str(dict(context.invocation_metadata() or ()).get("tinyraft-cluster", ""))


class _PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, transport: PeerTransport) -> None:
        self.t = transport

    async def _check_cluster(self, cluster_id: str, context: grpc.aio.ServicerContext) -> None:
        ours = self.t.handler.cluster_id
        if not ours:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this member has not joined a cluster yet (no cluster id)",
            )
        if cluster_id != ours:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"message from cluster {cluster_id!r}; this member belongs to {ours!r}",
            )

    async def Stream(
        self, request_iterator: AsyncIterator[pb.MessageBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MessageBatch]:
        back: asyncio.Queue[pb.MessageBatch | None] = asyncio.Queue()
        peer: str | None = None

        async def read() -> None:
            nonlocal peer
            try:
                async for batch in request_iterator:
                    if batch.cluster_id != self.t.handler.cluster_id:
                        break
                    if peer is None and batch.messages:
                        peer = batch.messages[0].src
                        self.t._return_paths[peer] = back
                    self.t.receive(batch)
            finally:
                back.put_nowait(None)  # the stream is over: so is the way back

        reader = asyncio.create_task(read())
        try:
            while (batch := await back.get()) is not None:
                yield batch
        finally:
            reader.cancel()
            if peer is not None and self.t._return_paths.get(peer) is back:
                del self.t._return_paths[peer]

    async def RequestVote(
        self, request: pb.RaftMessage, context: grpc.aio.ServicerContext
    ) -> pb.RaftMessage:
        await self._check_cluster(_cluster_of(context), context)
        m = from_proto(request) if request.WhichOneof("body") == "request_vote" else None
        if m is not None and self.t.faults is not None and self.t.faults.cut(m.src):
            return pb.RaftMessage()
        if not isinstance(m, RequestVote):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a vote request")
            return pb.RaftMessage()
        answer = await self.t.handler.vote(m)
        return to_proto(answer) if answer is not None else pb.RaftMessage()

    async def TimeoutNow(
        self, request: pb.RaftMessage, context: grpc.aio.ServicerContext
    ) -> pb.Empty:
        await self._check_cluster(_cluster_of(context), context)
        self.t.handler.deliver([from_proto(request)])
        return pb.Empty()

    async def InstallSnapshot(
        self, request_iterator: AsyncIterator[pb.SnapshotChunk], context: grpc.aio.ServicerContext
    ) -> pb.SnapshotAck:
        await self.t.handler.receive_snapshot(request_iterator)
        return pb.SnapshotAck()
