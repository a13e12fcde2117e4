"""The Caller and Admin gRPC services of a member: validation, forwarding to the
leader, and the mapping of failures to status codes a client can act on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, cast

import grpc

import tinyraft
from tinyraft.answers import as_results
from tinyraft.caller import LEADER_METADATA_KEY, TIMEOUT_METADATA_KEY
from tinyraft.core.sessions import Command, encode_records, encode_run
from tinyraft.core.types import (
    ConfigChangeRefused,
    NotLeader,
    ProposalError,
    Role,
    TooManyUncommitted,
)
from tinyraft.server.applier import Refused
from tinyraft.server.config import parse_address, parse_member_id
from tinyraft.server.member import Member, Overloaded, Unavailable
from tinyraft.server.module_client import ModuleOutOfSync
from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc, caller_pb2_grpc
from tinyraft.v1 import caller_pb2 as cpb

log = logging.getLogger("tinyraft.services")

PROMOTE_READY = 0.9  # a learner is promoted only with this share of committed entries
QUERY_TIMEOUT_S = 10.0
STREAM_IN_FLIGHT = 64  # requests a Caller stream may have unanswered (a Caller sends 4)
HOLD_SHARE = 0.8  # a call held for a leader answers with this share of its deadline used


async def _abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    leader: str | None = None,
) -> NoReturn:
    # Always present on our answers (empty: no leader to suggest), so a forwarding
    # member can tell a leader that answered from one that could not be reached.
    context.set_trailing_metadata(((LEADER_METADATA_KEY, leader or ""),))
    await context.abort(code, message)
    raise AssertionError("unreachable")


async def _fail(context: grpc.aio.ServicerContext, err: Exception) -> NoReturn:
    """One place that turns a member's exception into a gRPC status."""
    if isinstance(err, Unavailable):
        await _abort(context, grpc.StatusCode.UNAVAILABLE, str(err), err.leader)
    if isinstance(err, NotLeader):
        await _abort(context, grpc.StatusCode.UNAVAILABLE, str(err))
    if isinstance(err, (Overloaded, TooManyUncommitted)):
        await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
    if isinstance(err, ConfigChangeRefused):
        code = grpc.StatusCode.UNAVAILABLE if err.retryable else grpc.StatusCode.FAILED_PRECONDITION
        await _abort(context, code, str(err))
    if isinstance(err, ProposalError):
        await _abort(context, grpc.StatusCode.UNAVAILABLE, str(err))
    raise err


class _LeaderChanged(Exception):
    """A forwarded call was overtaken by news of another leader: forward it again."""


def _answered_by(err: grpc.aio.AioRpcError) -> str | None:
    """The leader hint of a member's answer ("" for none); None if no member answered
    (the call failed to connect or the connection broke)."""
    for key, value in err.trailing_metadata() or ():
        if key == LEADER_METADATA_KEY:
            return str(value)
    return None


def _role(member: Member) -> str:
    core = member.core
    if not member.cluster_id:
        return "joining"
    if member.id in core.config.learners:
        return "learner"
    return core.role.value


class _StreamRefusal(Exception):
    """An abort of one request on a stream: it becomes that request's answer."""

    def __init__(self, code: grpc.StatusCode, message: str, leader: str) -> None:
        super().__init__(message)
        self.code, self.message, self.leader = code, message, leader


class _StreamedRequest:
    """The part of a ServicerContext that Apply uses, for one request of a stream:
    an abort raises _StreamRefusal instead of ending the stream."""

    def __init__(self, timeout: float | None) -> None:
        self.leader = ""
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.leader = dict(metadata).get(LEADER_METADATA_KEY, "")

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _StreamRefusal(code, details, self.leader)

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.001)  # 0 would read as "none"


async def _stream_timeout(context: grpc.aio.ServicerContext) -> float | None:
    """The time each request of a stream may take, from the stream's metadata."""
    given = dict(context.invocation_metadata() or ()).get(TIMEOUT_METADATA_KEY)
    if given is None:
        return None
    if not (isinstance(given, str) and given.isascii() and given.isdigit()) or int(given) < 1:
        await _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"metadata {TIMEOUT_METADATA_KEY}: got {given!r}; give a whole number of milliseconds, "
            "at least 1, or leave it out",
        )
    return int(given) / 1000


async def _serve_stream[Request, Answer](
    requests: AsyncIterator[Request],
    context: grpc.aio.ServicerContext,
    handle: Callable[[Request, grpc.aio.ServicerContext], Awaitable[Any]],
    answer: Callable[..., Answer],
) -> AsyncIterator[Answer]:
    """A unary call's handler serving a stream: requests are handled as they arrive
    and answered in order, each as `answer(response=, leader=)` or, refused, as
    `answer(code=, message=, leader=)`; a refusal answers its request only."""
    timeout = await _stream_timeout(context)
    await context.send_initial_metadata(())  # the Caller waits for it: see caller.proto

    async def one(request: Request) -> Answer:
        request_context = _StreamedRequest(timeout)
        try:
            response = await handle(request, cast(grpc.aio.ServicerContext, request_context))
        except _StreamRefusal as refusal:
            return answer(
                code=refusal.code.value[0], message=refusal.message, leader=refusal.leader
            )
        except Exception as err:  # a bug: answer this request, keep the stream
            log.exception("a streamed request failed")
            return answer(code=grpc.StatusCode.UNKNOWN.value[0], message=f"internal error: {err!r}")
        return answer(response=response, leader=request_context.leader)

    answers: asyncio.Queue[asyncio.Future[Answer] | None] = asyncio.Queue()
    # Past this many unanswered, stop reading: HTTP/2 flow control then holds the
    # client back, instead of this member holding its requests in memory.
    room = asyncio.Semaphore(STREAM_IN_FLIGHT)

    async def take() -> None:
        incoming = aiter(requests)
        try:
            while True:
                await room.acquire()  # read a request only with room to hold it
                try:
                    request = await anext(incoming)
                except StopAsyncIteration:
                    break
                answers.put_nowait(asyncio.ensure_future(one(request)))
        finally:
            answers.put_nowait(None)

    taker = asyncio.create_task(take())
    try:
        while (next_answer := await answers.get()) is not None:
            yield await next_answer
            room.release()
        await taker  # a request that failed to decode ends the stream with an error
    finally:
        taker.cancel()
        while not answers.empty():
            if (left := answers.get_nowait()) is not None:
                left.cancel()


class CallerService(caller_pb2_grpc.CallerServicer):
    def __init__(self, member: Member) -> None:
        self.m = member
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _leader_stub(self) -> tuple[caller_pb2_grpc.CallerStub, str] | None:
        address = self.m.leader_address()
        if address is None or self.m.core.leader == self.m.id:
            return None
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = self.m.transport.channel(address)
        return caller_pb2_grpc.CallerStub(ch), address

    async def Apply(
        self, request: cpb.ApplyRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ApplyResponse:
        m = self.m
        if not m.started:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "this member is starting; retry")
        records, count = await self._records(request, context)
        if m.core.role is not Role.LEADER:
            return await self._forward(request, records, count, context)
        return await self._submit(request, records, count, context)

    async def ApplyStream(
        self, requests: AsyncIterator[cpb.ApplyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.ApplyStreamResponse]:
        async for answer in _serve_stream(requests, context, self.Apply, cpb.ApplyStreamResponse):
            yield answer

    async def _records(
        self, request: cpb.ApplyRequest, context: grpc.aio.ServicerContext
    ) -> tuple[bytes, int]:
        """Check a request's commands (either form) and encode them for the log."""
        limit = self.m.cfg.max_command_bytes

        async def refuse(message: str) -> NoReturn:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, message)

        def too_big(field: str, size: int) -> str:
            return f"{field}: {size} bytes is over the {limit}-byte limit (RAFT_MAX_COMMAND_BYTES)"

        if request.payloads:
            if request.commands:
                await refuse("commands and payloads: send one form or the other, not both")
            if request.client_id == 0 or request.first_sequence == 0:
                await refuse("client_id and first_sequence must be non-zero (use a Caller session)")
            payloads = request.payloads
            if request.first_sequence + len(payloads) > 1 << 64:
                await refuse(
                    "first_sequence: the payloads' sequence numbers would pass 2^64-1; "
                    "start a new Caller session"
                )
            sizes = list(map(len, payloads))
            if max(sizes) > limit:
                i = next(i for i, n in enumerate(sizes) if n > limit)
                await refuse(too_big(f"payloads[{i}]", sizes[i]))
            records = encode_run(
                request.client_id, request.first_sequence, request.ack_below, payloads, sizes
            )
            return records, len(payloads)
        if not request.commands:
            await refuse("commands or payloads: at least one command is required")
        commands = []
        for i, c in enumerate(request.commands):
            if c.client_id == 0 or c.sequence == 0:
                await refuse(
                    f"commands[{i}]: client_id and sequence must be non-zero (use a Caller session)"
                )
            if len(c.payload) > limit:
                await refuse(too_big(f"commands[{i}].payload", len(c.payload)))
            commands.append(Command(c.client_id, c.sequence, c.ack_below, c.payload))
        return encode_records(commands), len(commands)

    async def _submit(
        self,
        request: cpb.ApplyRequest,
        records: bytes,
        count: int,
        context: grpc.aio.ServicerContext,
    ) -> cpb.ApplyResponse:
        """Replicate and apply; answer in the form the request came in."""
        try:
            results = await self.m.submit(records, count)
        except Exception as err:
            await _fail(context, err)
        if request.payloads:
            try:  # protobuf checks that all are bytes, in C: a refusal is rare
                return cpb.ApplyResponse(packed_results=results)  # type: ignore[arg-type]
            except TypeError:
                return cpb.ApplyResponse(
                    packed_results=[r if type(r) is bytes else b"" for r in results],
                    errors={i: r.reason for i, r in enumerate(results) if type(r) is Refused},
                )
        return cpb.ApplyResponse(
            results=[
                cpb.CommandResult(result=r)
                if type(r) is bytes
                else cpb.CommandResult(error=r.reason)  # type: ignore[union-attr]
                for r in results
            ]
        )

    async def _forward(
        self,
        request: cpb.ApplyRequest,
        records: bytes,
        count: int,
        context: grpc.aio.ServicerContext,
    ) -> cpb.ApplyResponse:
        """Forward to the leader. During an election (no leader known, or the one we
        knew does not answer) hold the call until a leader is known and go there, as
        Consul holds RPCs: the client gets its answer as soon as the cluster can give
        one, instead of polling every member while the vote runs. Forwarding again is
        safe: the session numbers make a command apply once."""
        m = self.m
        remaining = context.time_remaining() or QUERY_TIMEOUT_S
        election_s = m.cfg.election_ms / 1000
        deadline = time.monotonic() + min(remaining * HOLD_SHARE, 4 * election_s)
        silent: tuple[str, str, float] | None = None  # a leader that did not answer: why, since
        while True:
            if m.core.role is Role.LEADER:
                return await self._submit(request, records, count, context)
            target = self._leader_stub()
            if target is not None:
                stub, address = target
                try:
                    return await self._forward_once(stub, address, request, context)
                except _LeaderChanged:
                    continue
                except grpc.aio.AioRpcError as err:
                    hint = _answered_by(err)
                    if hint is not None or err.code() != grpc.StatusCode.UNAVAILABLE:
                        await _abort(
                            context,
                            err.code(),
                            f"forwarded to the leader at {address}: {err.details()}",
                            hint or None,
                        )
                    if silent is None or silent[0] != address:
                        silent = (address, err.details() or "no answer", time.monotonic())
            now = time.monotonic()
            # A leader still in office but silent to us for two election timeouts is
            # not dead (the others would have elected another by then) but out of our
            # reach: say so, and point the client at it (it may reach it where we can't).
            in_office = target is not None and silent is not None and target[1] == silent[0]
            if in_office and silent and (now - silent[2] >= 2 * election_s or now >= deadline):
                await _abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    f"the leader at {silent[0]} did not answer this member ({silent[1]}); retry",
                    silent[0],
                )
            if now >= deadline:
                await _abort(
                    context, grpc.StatusCode.UNAVAILABLE, "no leader was elected in time; retry"
                )
            # Wait for news of a leader; one that did not answer may be dead (an
            # election will say) or between reconnects: ask it again a tick later.
            wait = min(m.cfg.heartbeat_ms / 1000, deadline - now)
            await m.wait_for_leader(target and target[1], m.core.term, wait)

    async def _forward_once(
        self,
        stub: caller_pb2_grpc.CallerStub,
        address: str,
        request: cpb.ApplyRequest,
        context: grpc.aio.ServicerContext,
    ) -> cpb.ApplyResponse:
        """One forward. Raises _LeaderChanged if this member learns of another leader
        first: the one asked may be frozen with its connection still up."""
        timeout = context.time_remaining() or QUERY_TIMEOUT_S
        call = stub.Apply(request, timeout=timeout)
        answer = asyncio.ensure_future(call)
        changed = asyncio.ensure_future(self.m.wait_for_leader(address, self.m.core.term, timeout))
        try:
            await asyncio.wait({answer, changed}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done() and changed.result():
                call.cancel()
                raise _LeaderChanged
            reply = await answer
            context.set_trailing_metadata(((LEADER_METADATA_KEY, address),))  # next time, go there
            return reply
        finally:
            changed.cancel()
            if not answer.done():
                call.cancel()

    async def Query(
        self, request: cpb.QueryRequest, context: grpc.aio.ServicerContext
    ) -> cpb.QueryResponse:
        applied, [answer], errors = await self._read(
            [request.request], request.consistency, context
        )
        if errors:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the Module refused the query: {errors[0]}",
            )
        return cpb.QueryResponse(answer=answer, applied_index=applied)

    async def QueryStream(
        self, requests: AsyncIterator[cpb.QueryBatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.QueryStreamResponse]:
        async for answer in _serve_stream(
            requests, context, self.QueryBatch, cpb.QueryStreamResponse
        ):
            yield answer

    async def QueryBatch(
        self, request: cpb.QueryBatchRequest, context: grpc.aio.ServicerContext
    ) -> cpb.QueryBatchResponse:
        if not request.requests:
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "requests: at least one is required"
            )
        applied, answers, errors = await self._read(
            list(request.requests), request.consistency, context
        )
        if request.packed:
            return cpb.QueryBatchResponse(answers=answers, errors=errors, applied_index=applied)
        return cpb.QueryBatchResponse(
            results=as_results(answers, errors, cpb.QueryResult), applied_index=applied
        )

    async def _read(
        self, requests: list[bytes], consistency: int, context: grpc.aio.ServicerContext
    ) -> tuple[int, list[bytes], dict[int, str]]:
        """Answers from one state at least as new as the consistency asks: one ReadIndex
        round and one Module call, however many questions."""
        m = self.m
        if not m.started:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "this member is starting; retry")
        timeout = context.time_remaining() or QUERY_TIMEOUT_S
        try:
            if consistency != cpb.CONSISTENCY_STALE:
                if consistency == cpb.CONSISTENCY_LINEARIZABLE and _caught_up(m):
                    index, early = await _answer_while_confirming(m, requests, timeout)
                    if early is not None:
                        return early
                else:
                    index = await m.read_index(consistency == cpb.CONSISTENCY_LEASE, timeout)
                await asyncio.wait_for(m.applier.wait_applied(index), timeout)
            applied = m.applier.applied
            return applied, *await m.module.query_batch(requests, timeout, applied)
        except TimeoutError:
            await _abort(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, "the read did not complete in time"
            )
        except ModuleOutOfSync:
            m.applier.rebuild_soon()
            await _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "this member's Module restarted and is being restored; retry",
            )
        except grpc.aio.AioRpcError as err:
            await _abort(
                context, grpc.StatusCode.UNAVAILABLE, f"the Module is unavailable: {err.details()}"
            )
        except Exception as err:
            await _fail(context, err)

    async def Status(
        self, request: cpb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> cpb.StatusResponse:
        m, core = self.m, self.m.core
        return cpb.StatusResponse(
            member_id=m.id,
            cluster_id=m.cluster_id,
            role=_role(m),
            term=core.term,
            leader_id=core.leader or "",
            leader_address=m.leader_address() or "",
            commit_index=core.commit,
            applied_index=m.applier.applied,
            voters=sorted(core.config.voters),
            learners=sorted(core.config.learners),
        )


def _caught_up(m: Member) -> bool:
    """Whether this member's Module likely holds the state a read arriving now needs:
    it has applied every entry it knows committed, and it knows a leader. On the leader
    that state holds the read index, which is the commit index. A follower gets its
    read index from the leader, and it is newer if the leader committed more since it
    last said: then the answers are dropped and the Module asked again."""
    return m.core.leader is not None and m.applier.applied >= m.core.commit


async def _answer_while_confirming(
    m: Member, requests: list[bytes], timeout: float
) -> tuple[int, tuple[int, list[bytes], dict[int, str]] | None]:
    """A linearizable read whose Module call overlaps the heartbeat round that confirms
    the leadership, instead of waiting for it: the read index, and the answers if they
    hold. They leave only once a quorum has confirmed, so a deposed leader never
    releases them. They are linearizable if the state they came from holds the read
    index: that state is committed, it is the state at a moment after the read arrived,
    and it holds every write acknowledged before. (A later read index, as a leader yet
    to commit in its term gets, or a follower whose leader committed more since it last
    said, drops the answers: the caller asks again once that index is applied.)"""
    applied = m.applier.applied
    answers = asyncio.ensure_future(m.module.query_batch(requests, timeout, applied))
    try:
        index = await m.read_index(False, timeout)
    except BaseException:
        answers.cancel()  # if it is done, this still stops asyncio logging its error as lost
        raise
    if index > applied:
        answers.cancel()
        return index, None
    return index, (applied, *await answers)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, member: Member) -> None:
        self.m = member

    async def Bootstrap(
        self, request: apb.BootstrapRequest, context: grpc.aio.ServicerContext
    ) -> apb.BootstrapResponse:
        m = self.m
        if m.cluster_id or m.core.log.last_index or m.core.term:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this member already belongs to cluster {m.cluster_id or '(joining)'}: "
                "an existing cluster is never bootstrapped again",
            )
        return apb.BootstrapResponse(cluster_id=m.bootstrap())

    async def _change(
        self, context: grpc.aio.ServicerContext, op: str, member: str, address: str | None = None
    ) -> apb.MembershipResponse:
        if not member:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "member_id: required")
        try:
            index = await self.m.change_membership(op, member, address)
        except Exception as err:
            await _fail(context, err)
        return apb.MembershipResponse(cluster_id=self.m.cluster_id, index=index)

    async def AddLearner(
        self, request: apb.AddLearnerRequest, context: grpc.aio.ServicerContext
    ) -> apb.MembershipResponse:
        try:
            parse_member_id(request.member_id)
        except ValueError as err:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"member_id: expected {err}")
        try:
            parse_address(request.address)
        except ValueError as err:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"address: expected {err}")
        config = self.m.core.config
        if (
            request.member_id in config.learners
            and config.address(request.member_id) == request.address
        ):
            # Idempotent: a learner that restarted before it learned it was added.
            return apb.MembershipResponse(cluster_id=self.m.cluster_id, index=self.m.core.commit)
        if request.member_id in config.voters:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"member {request.member_id} is already a voter; if it lost its data, remove it "
                f"first (tinyraft members remove {request.member_id})",
            )
        return await self._change(context, "add_learner", request.member_id, request.address)

    async def Promote(
        self, request: apb.MemberRequest, context: grpc.aio.ServicerContext
    ) -> apb.MembershipResponse:
        core = self.m.core
        pr = core.progress.get(request.member_id)
        lagging = pr is None or pr.match < PROMOTE_READY * core.commit
        if core.role is Role.LEADER and request.member_id in core.config.learners and lagging:
            # A voter that cannot keep up would weaken quorum at once (etcd refuses too).
            await _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"learner {request.member_id} is not caught up (has {pr.match if pr else 0} "
                f"of {core.commit} committed entries); retry once it is",
            )
        return await self._change(context, "promote", request.member_id)

    async def RemoveMember(
        self, request: apb.MemberRequest, context: grpc.aio.ServicerContext
    ) -> apb.MembershipResponse:
        return await self._change(context, "remove", request.member_id)

    async def TransferLeadership(
        self, request: apb.TransferLeadershipRequest, context: grpc.aio.ServicerContext
    ) -> apb.MemberRequest:
        m, core = self.m, self.m.core
        if core.role is not Role.LEADER:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "not the leader", m.leader_address())
        target = request.member_id or _most_caught_up(m)
        if target is None:
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "no other voter to transfer to"
            )
        if target not in core.config.voters:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"member_id: {target} is not a voter")
        try:
            core.transfer_leadership(target)
        except Exception as err:
            await _fail(context, err)
        m.kick()
        deadline = asyncio.get_running_loop().time() + m.cfg.election_ms / 1000 * 2
        while core.leader != target and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if core.leader != target:
            await _abort(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, f"{target} did not take over in time"
            )
        return apb.MemberRequest(member_id=target)

    async def Snapshot(
        self, request: apb.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> apb.SnapshotResponse:
        info = await self.m.applier.snapshot_now()
        if info is None:
            latest = self.m.data_dir.snapshots.latest()
            if latest is None:
                await _abort(
                    context, grpc.StatusCode.FAILED_PRECONDITION, "nothing to snapshot yet"
                )
            info = latest
        return apb.SnapshotResponse(index=info.meta.index, term=info.meta.term, size=info.size)

    async def Status(
        self, request: apb.AdminStatusRequest, context: grpc.aio.ServicerContext
    ) -> apb.AdminStatusResponse:
        m, core = self.m, self.m.core
        members = []
        if core.role is Role.LEADER:
            for member in sorted(core.config.members):
                pr = core.progress.get(member)
                contact = 0.0 if member == m.id else m.last_contact(member)
                members.append(
                    apb.MemberProgress(
                        member_id=member,
                        address=core.config.address(member) or "",
                        suffrage="voter" if member in core.config.voters else "learner",
                        role="leader" if member == m.id else "follower",
                        match_index=pr.match if pr else 0,
                        lag=core.log.last_index - pr.match if pr else 0,
                        last_contact_s=contact if contact is not None else -1.0,
                        state=pr.state.value if pr else "",
                    )
                )
        return apb.AdminStatusResponse(
            member_id=m.id,
            cluster_id=m.cluster_id,
            role=_role(m),
            term=core.term,
            leader_id=core.leader or "",
            commit_index=core.commit,
            applied_index=m.applier.applied,
            last_index=core.log.last_index,
            snapshot_index=core.log.snapshot.index,
            members=members,
            address=str(m.cfg.advertise),
            module_ready=m.applier.module_ready,
            version=tinyraft.__version__,
        )


def _most_caught_up(m: Member) -> str | None:
    core = m.core
    others = [
        (core.progress[v].match, v) for v in core.config.voters if v != m.id and v in core.progress
    ]
    return max(others)[1] if others else None
