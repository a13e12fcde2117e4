"""The Caller SDK: apply commands to, and query, a tinyraft cluster.

    async with Caller(["raft-0.raft:7000", "raft-1.raft:7000"]) as caller:
        result = await caller.apply(b"set x 1")
        answer = await caller.query(b"get x")

    with BlockingCaller("dns:///raft-client.default:7000") as caller:
        caller.apply(b"set x 1")

Retries are safe. A Caller is a session (a random client id) and numbers its commands
1, 2, 3...; a retry resends the same numbers, and the cluster applies each (client id,
number) once and answers a retry with the first result (Raft thesis §6.3). Each request
also carries `ack_below`, the lowest number not yet answered, so the cluster can forget
the results below it.

A command whose call fails for good (retries exhausted, refused, cancelled) may or may
not have been applied, so its number stays unanswered forever. In a session that keeps
going, that would pin `ack_below` and make the cluster cache every later result for as
long as the session lives; so the Caller leaves that session behind (it expires on the
cluster once idle) and numbers later commands in a fresh one.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import grpc
import grpc.aio

from tinyraft.answers import unpack
from tinyraft.v1 import caller_pb2, caller_pb2_grpc

LEADER_METADATA_KEY = "tinyraft-leader"
# On a stream, each request's time in milliseconds: what a unary call's deadline tells
# a member (e.g. how long a follower may hold a write while a leader is elected).
TIMEOUT_METADATA_KEY = "tinyraft-timeout-ms"
# The generated stub class is untyped; calling it through this typed name keeps mypy quiet.
_new_stub: Callable[[grpc.aio.Channel], caller_pb2_grpc.CallerStub] = caller_pb2_grpc.CallerStub

ConsistencyName = Literal["linearizable", "lease", "stale"]
_CONSISTENCY = {
    "linearizable": caller_pb2.CONSISTENCY_LINEARIZABLE,
    "lease": caller_pb2.CONSISTENCY_LEASE,
    "stale": caller_pb2.CONSISTENCY_STALE,
}
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    # gRPC's default reconnect backoff grows to 2 minutes; members restart in seconds.
    # (Not min_reconnect_backoff_ms: it is also the connect timeout.)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Answers are as large as the Module makes them; the cluster is trusted.
    ("grpc.max_receive_message_length", -1),
]


MAX_IN_FLIGHT = 4  # Apply requests one Caller keeps outstanding at once
MAX_BATCH = 2048  # commands per request when calls pile up (fewer, fuller rounds at peak)
MAX_BATCH_BYTES = 2 << 20  # and bytes per request: under gRPC's default 4 MiB message limit
# While a request is out, another leaves only with a full one waiting. A request costs
# the cluster a round (~4 ms of CPU over its seven processes at low load, as much as
# ~150 commands at peak): small ones side by side fill the cores and slow every call.
# Measured: 1,000 calls/s open loop p50 10 -> 6 ms; 64 in flight 6.6k -> 9.0k/s (from
# every call its own request); 4,096 reads in flight ~117k -> ~130k/s (from half full).
WORTH_A_REQUEST = (MAX_BATCH, MAX_BATCH_BYTES)  # commands, or bytes


# What a member older than the packed Apply form says to it (it sees no commands).
_OLD_MEMBER_REFUSAL = "commands: at least one command is required"


class TinyraftError(Exception):
    """Base of every error the Caller raises. `code` is the gRPC status, if there was one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class Unavailable(TinyraftError):
    """No member could serve the call before the retry policy ran out."""


class CommandError(TinyraftError):
    """The cluster refused a command (e.g. its session expired); it was not applied.
    Later commands go in a new session."""

    def __init__(self, message: str, position: int, error: str) -> None:
        super().__init__(message)
        self.position = position  # index of the command in the apply_many batch
        self.error = error  # the cluster's reason, verbatim


class InvalidArgument(TinyraftError):
    """The cluster rejected the request itself (e.g. a command too large)."""


class FailedPrecondition(TinyraftError):
    """The member cannot serve this call in its current state (e.g. not a member)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to keep trying a call that failed for a retryable reason.

    The n-th retry waits a random time between half and all of
    min(max_backoff, initial_backoff * multiplier**(n-1)) seconds ("equal jitter":
    clients that failed together do not retry together, and no retry is immediate).
    A leader hint pointing somewhere new is followed at once.

    max_backoff is short because the usual reason to retry is a leader change, over
    in one or two election timeouts: a client polling slowly would notice the new
    leader long after it was elected. A member that says it is overloaded
    (RESOURCE_EXHAUSTED) is given up to overload_backoff instead."""

    max_attempts: int = 300
    initial_backoff: float = 0.05
    max_backoff: float = 0.1
    overload_backoff: float = 2.0
    multiplier: float = 2.0
    deadline: float = 30.0  # seconds for all attempts of one call together

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if (
            not 0 < self.initial_backoff <= self.max_backoff <= self.overload_backoff
            or self.multiplier < 1
        ):
            raise ValueError(
                "RetryPolicy needs 0 < initial_backoff <= max_backoff <= overload_backoff "
                "and multiplier >= 1"
            )
        if not self.deadline > 0:  # (NaN too)
            raise ValueError("RetryPolicy.deadline must be positive")

    def backoff(self, retry: int, overloaded: bool = False) -> float:
        cap = self.overload_backoff if overloaded else self.max_backoff
        ceiling = min(cap, self.initial_backoff * self.multiplier ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class Status:
    """One member's view of the cluster, from the Status RPC."""

    member_id: str
    cluster_id: str
    role: str
    term: int
    leader_id: str
    leader_address: str
    commit_index: int
    applied_index: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]


class _Session:
    """Sequence numbers of one client id, and which of them are still unanswered."""

    def __init__(self) -> None:
        self.client_id = secrets.randbelow(2**63 - 1) + 1  # 63 bits, never 0
        self._next = 1
        # The first number of each request not yet answered. Requests take numbers in
        # increasing order, so the first key is the lowest number not yet answered.
        self._unanswered: dict[int, None] = {}
        self._ack_below = 1  # every number below this has been answered

    def reserve(self, count: int) -> range:
        numbers = range(self._next, self._next + count)
        self._next += count
        if numbers:  # an empty one has nothing to answer, and would share a key
            self._unanswered[numbers.start] = None
        return numbers

    def answered(self, numbers: range) -> None:
        if numbers:
            self._unanswered.pop(numbers.start, None)
        self._ack_below = next(iter(self._unanswered), self._next)

    @property
    def ack_below(self) -> int:
        return self._ack_below


class Caller:
    """An asyncio client of a tinyraft cluster. Safe for many concurrent calls.

    targets: "host:port", "dns:///name:port" (every address the name resolves to,
      round-robin), or a list of either. Any member serves every call.
    tls_ca, tls_cert, tls_key: PEM file paths. Giving any of them turns TLS on; tls_ca
      defaults to the system roots, and tls_cert with tls_key is the client certificate
      (members with TLS on require one, signed by their TLS_CA_FILE).
    timeout: seconds per attempt (the retry policy's deadline bounds the whole call
      once it has left: while requests are out, a call waits for them, for one timeout
      at most unless MAX_IN_FLIGHT are out).
    wait_for_ready: until some member has answered, an attempt waits, up to `timeout`,
      for a member that is not yet reachable instead of failing at once (a cluster that
      is starting up). Once the cluster has answered, a member that cannot be reached is
      down: the attempt fails at once and the next goes elsewhere.
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        wait_for_ready: bool = True,
    ) -> None:
        self._targets = _check_targets(targets)
        self._credentials = _credentials(tls_ca, tls_cert, tls_key)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(
                f"timeout must be a positive, finite number of seconds per attempt, not "
                f"{timeout!r} (the retry policy's deadline bounds the whole call)"
            )
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._wait_for_ready = wait_for_ready
        self._answered = False  # some member has answered: unreachable now means down
        self._session = _Session()
        self._next_target = random.randrange(len(self._targets))  # spread clients out
        self._leader: str | None = None  # from the latest hint: where writes go first
        # Created on first use, so that they belong to the event loop that uses them.
        self._channels: dict[str, tuple[grpc.aio.Channel, caller_pb2_grpc.CallerStub]] = {}
        self._closed = False
        # Concurrent calls share requests (batching is the design): applies in one
        # stream of ApplyRequests, queries in one stream per consistency.
        self._applies = _Batcher(self._apply_request, patience=self._timeout)
        self._queries: dict[str, _Batcher] = {}  # by consistency name
        self._batch_queries = True  # until a member answers QueryBatch UNIMPLEMENTED
        self._streams: dict[tuple[str, str], _Stream] = {}  # by (call name, target)
        # (call name, target) a member refused to stream: an older member, in a rolling
        # upgrade; the others keep their streams.
        self._unstreamed: set[tuple[str, str]] = set()
        self._packed_applies = True  # until a member refuses the packed Apply form

    async def apply(self, command: bytes) -> bytes:
        """Apply one command; its result once committed and applied by the Module.
        Concurrent calls are batched into shared requests; each keeps its own result."""
        _check_bytes(command)
        return await self._applies.submit(bytes(command))

    async def apply_many(self, commands: Sequence[bytes]) -> list[bytes]:
        """Apply commands in order as one log entry; one result per command.

        Raises CommandError if the cluster refused one of them (the others' results are
        lost with it: call apply() per command when that matters)."""
        for command in commands:
            _check_bytes(command)
        if not commands:
            return []
        results = await self._apply_request(commands)
        for result in results:
            if isinstance(result, CommandError):
                raise result
        return results  # type: ignore[return-value]

    async def _apply_request(self, commands: Sequence[bytes]) -> list[bytes | CommandError]:
        """One ApplyRequest (retried with the same sequence numbers)."""
        session = self._session
        numbers = session.reserve(len(commands))
        try:
            results, errors = await self._send_applies(session, numbers, commands)
        except BaseException:
            if self._session is session:
                self._session = _Session()
            raise
        session.answered(numbers)
        _check_answers(len(results), errors, len(commands), "commands")
        if not errors:
            return results  # type: ignore[return-value]
        # The usual reason is an expired session: later commands start a new one.
        if self._session is session:
            self._session = _Session()
        out: list[bytes | CommandError] = list(results)
        for position, error in errors.items():
            out[position] = CommandError(
                f"the cluster refused command {position} of {len(commands)}: "
                f"{error}; it was not applied",
                position,
                error,
            )
        return out

    async def _send_applies(
        self, session: _Session, numbers: range, commands: Sequence[bytes]
    ) -> tuple[list[bytes], dict[int, str]]:
        """Results, and the refused commands' reasons by position. Sent in the packed
        form, unless a member older than it refused that form."""
        if self._packed_applies:
            request = caller_pb2.ApplyRequest(
                client_id=session.client_id,
                first_sequence=numbers.start,
                ack_below=session.ack_below,
                payloads=commands,
            )
            try:
                response = await self._call(
                    "Apply", lambda stub: stub.Apply, request, lambda stub: stub.ApplyStream
                )
                return list(response.packed_results), dict(response.errors)
            except InvalidArgument as err:
                if _OLD_MEMBER_REFUSAL not in str(err):
                    raise
                self._packed_applies = False  # nothing was applied: send it the old way
        request = caller_pb2.ApplyRequest(
            commands=[
                caller_pb2.Command(
                    client_id=session.client_id, sequence=n, ack_below=session.ack_below, payload=c
                )
                for n, c in zip(numbers, commands, strict=True)
            ]
        )
        response = await self._call("Apply", lambda stub: stub.Apply, request)
        errors = {i: r.error for i, r in enumerate(response.results) if r.error}
        return [r.result for r in response.results], errors

    async def query(self, request: bytes, consistency: ConsistencyName = "linearizable") -> bytes:
        """Ask the Module a read-only question.

        linearizable: confirmed with a quorum, never stale. lease: no extra round trip,
        relies on bounded clock drift. stale: whatever the member answering has applied."""
        batcher = self._queries.get(consistency)  # one lookup: this runs for every call
        if batcher is None:
            if consistency not in _CONSISTENCY:
                raise ValueError(
                    f"consistency must be 'linearizable', 'lease' or 'stale', not {consistency!r}"
                )
            level = _CONSISTENCY[consistency]
            batcher = self._queries[consistency] = _Batcher(
                lambda requests: self._query_request(requests, level), patience=self._timeout
            )
        if type(request) is not bytes:
            _check_bytes(request, "queries")
            request = bytes(request)
        return await batcher.submit(request)

    async def _query_request(
        self, requests: Sequence[bytes], level: caller_pb2.Consistency
    ) -> list[bytes | TinyraftError]:
        """One QueryBatchRequest: every answer from the same state."""
        if not self._batch_queries:
            return list(await asyncio.gather(*(self._query_one(r, level) for r in requests)))
        message = caller_pb2.QueryBatchRequest(requests=requests, consistency=level, packed=True)
        try:
            response = await self._call(
                "Query", lambda stub: stub.QueryBatch, message, lambda stub: stub.QueryStream
            )
        except TinyraftError as err:
            if err.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            self._batch_queries = False  # a member older than QueryBatch: one by one
            return await self._query_request(requests, level)
        answers, errors = unpack(response)  # an older member answers in the older form
        _check_answers(len(answers), errors, len(requests), "queries")
        out: list[bytes | TinyraftError] = list(answers)
        for position, error in errors.items():
            out[position] = InvalidArgument(
                f"Query rejected: the Module refused the query: {error}; fix the request: "
                "retrying it will not help",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        return out

    async def _query_one(
        self, request: bytes, level: caller_pb2.Consistency
    ) -> bytes | TinyraftError:
        message = caller_pb2.QueryRequest(request=request, consistency=level)
        try:
            response = await self._call("Query", lambda stub: stub.Query, message)
        except InvalidArgument as err:
            return err  # this question only
        answer: bytes = response.answer
        return answer

    async def status(self) -> Status:
        """The status of whichever member answers."""
        r = await self._call("Status", lambda stub: stub.Status, caller_pb2.StatusRequest())
        return Status(
            member_id=r.member_id,
            cluster_id=r.cluster_id,
            role=r.role,
            term=r.term,
            leader_id=r.leader_id,
            leader_address=r.leader_address,
            commit_index=r.commit_index,
            applied_index=r.applied_index,
            voters=tuple(r.voters),
            learners=tuple(r.learners),
        )

    async def close(self) -> None:
        self._closed = True
        streams = list(self._streams.values())
        self._streams.clear()
        await asyncio.gather(*(stream.close() for stream in streams))
        channels = [channel for channel, _ in self._channels.values()]
        self._channels.clear()
        await asyncio.gather(*(channel.close() for channel in channels))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        name: str,
        method: Callable[[caller_pb2_grpc.CallerStub], Callable[..., Any]],  # -> a grpc.aio call
        request: Any,
        stream: Callable[[caller_pb2_grpc.CallerStub], Callable[..., Any]] | None = None,
    ) -> Any:
        """One RPC under the retry policy: the same request every attempt. With stream
        (the streaming form of `method`), it goes on the target's stream of that call,
        where members serve it."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self._retry.deadline
        failures: list[str] = []
        hurried = False  # the previous retry skipped its backoff
        for attempt in range(1, self._retry.max_attempts + 1):
            if self._closed:  # checked every attempt: a retry must not reopen channels
                raise TinyraftError("this Caller is closed; create a new one")
            target = self._leader or self._targets[self._next_target]
            remaining = deadline - loop.time()
            hint: str | None = None
            # A stream tells the member the Caller's whole timeout, once, when it opens:
            # an attempt with less time left goes as a unary call carrying its own.
            streamable = (name, target) not in self._unstreamed and remaining >= self._timeout
            opener = stream if streamable else None
            try:
                if opener is not None:
                    stream_to = self._stream(name, opener, target)
                    try:
                        reply, hint = await stream_to.send(request, min(self._timeout, remaining))
                    except grpc.aio.AioRpcError as err:
                        if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                            raise
                        self._unstreamed.add((name, target))  # unary calls it is
                        opener = None
                if opener is None:
                    call = method(self._stub(target))(
                        request,
                        timeout=min(self._timeout, remaining),
                        wait_for_ready=self._wait_for_ready and not self._answered,
                    )
                    reply = await call
                    hint = _hint_in(await call.trailing_metadata())
                self._answered = True
                # A follower that forwarded a write names the leader: go there next time
                # rather than pay the extra hop on every request.
                if hint and hint != target:
                    self._leader = hint
                return reply
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code not in _RETRYABLE:
                    raise _typed_error(name, target, err) from err
                failures.append(f"{code.name} from {target}: {err.details()}")
                redirected = self._route_after(target, code, _leader_hint(err))
                overloaded = code == grpc.StatusCode.RESOURCE_EXHAUSTED
            remaining = deadline - loop.time()
            if attempt == self._retry.max_attempts or remaining <= 0:
                break
            # Follow a new leader hint at once, but never twice in a row: members that
            # disagree about the leader must not make a Caller spin.
            hurried = redirected and not hurried
            if not hurried:
                await asyncio.sleep(min(self._retry.backoff(attempt, overloaded), remaining))
                if deadline - loop.time() <= 0:
                    break
        raise Unavailable(
            f"{name} failed {len(failures)} attempts in {loop.time() - start:.1f}s "
            f"(last: {failures[-1]}); check that the cluster has a leader and the targets "
            "are reachable. An Apply may or may not have been applied.",
            grpc.StatusCode.UNAVAILABLE,
        )

    def _route_after(self, target: str, code: grpc.StatusCode, hint: str | None) -> bool:
        """Choose the next attempt's member; True if it should go at once."""
        if hint:
            fresh = hint != target
            self._leader = hint
            return fresh
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return False  # the member is busy, not gone: back off and ask it again
        if target == self._leader:
            self._leader = None  # the leader we knew is gone: back to the configured list
        elif target == self._targets[self._next_target]:
            self._next_target = (self._next_target + 1) % len(self._targets)
        return False

    def _stream(
        self,
        name: str,
        method: Callable[[caller_pb2_grpc.CallerStub], Callable[..., Any]],
        target: str,
    ) -> _Stream:
        stream = self._streams.get((name, target))
        if stream is None or stream.ended is not None:
            wait = self._wait_for_ready and not self._answered
            per_request = ((TIMEOUT_METADATA_KEY, str(math.ceil(self._timeout * 1000))),)
            call = method(self._stub(target))(wait_for_ready=wait, metadata=per_request)
            stream = self._streams[name, target] = _Stream(call)
        return stream

    def _stub(self, target: str) -> caller_pb2_grpc.CallerStub:
        entry = self._channels.get(target)
        if entry is None:
            options = list(_CHANNEL_OPTIONS)
            if target.startswith("dns:"):
                # Spread calls over every address of the name and skip the dead ones.
                options.append(("grpc.lb_policy_name", "round_robin"))
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(target, options=options)
            else:
                channel = grpc.aio.secure_channel(target, self._credentials, options=options)
            entry = self._channels[target] = (channel, _new_stub(channel))
        return entry[1]


class _Stream:
    """Requests of one kind (ApplyStream or QueryStream) to one member on one long-lived
    stream: a stream message costs a Python member about half of a unary call. Answers
    come in the order sent; a refusal answers its request only. A broken stream fails
    every request waiting on it (the retry policy resends them) and the next request
    opens a new one."""

    def __init__(self, call: Any) -> None:  # a grpc.aio StreamStreamCall
        self._call = call
        self._opened = False
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._writing = asyncio.Lock()  # gRPC takes one write at a time
        self.ended: grpc.aio.AioRpcError | None = None
        self._reader = asyncio.create_task(self._read())

    async def send(self, request: Any, timeout: float) -> tuple[Any, str]:
        """The response, and the leader's address if the member forwarded it there."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                async with self._writing:
                    if not self._opened:
                        # A member without the stream answers UNIMPLEMENTED here. (A
                        # write that races a stream's end turns its status INTERNAL.)
                        await self._call.initial_metadata()
                        self._opened = True
                    if self.ended is not None:
                        raise self._ended_error()
                    self._waiting.append(future)
                    try:
                        await self._call.write(request)
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            future.cancel()  # no answer wanted any more
                            raise  # this send was cancelled or timed out
                        # gRPC cancelled the call under the write (another send's end):
                        self.end(_stream_error(grpc.StatusCode.UNAVAILABLE, "the stream ended"))
                    except Exception as err:
                        # A finished stream: the reader fails `future` with its status.
                        # Otherwise a request it cannot send: no answer would come.
                        if not self._call.done():
                            message = f"a request could not be sent: {err}"
                            self.end(_stream_error(grpc.StatusCode.UNAVAILABLE, message))
                answer = await future
        except TimeoutError:
            # Answers come in order: one overdue holds up the rest. Start afresh.
            self.end(_stream_error(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time"))
            raise self._ended_error() from None
        if answer.code:
            code = _CODES.get(answer.code, grpc.StatusCode.UNKNOWN)
            raise _stream_error(code, answer.message, answer.leader)
        return answer.response, answer.leader

    async def close(self) -> None:
        self.end(_stream_error(grpc.StatusCode.CANCELLED, "the Caller was closed"))
        await self._reader

    def end(self, error: grpc.aio.AioRpcError) -> None:
        if self.ended is None:
            self.ended = error
            self._call.cancel()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self._ended_error())

    def _ended_error(self) -> grpc.aio.AioRpcError:
        """How the stream ended, a copy for each request it fails: an exception raised in
        several tasks would collect all their tracebacks."""
        ended = self.ended
        assert ended is not None
        return _stream_error(ended.code(), ended.details() or "", _leader_hint(ended) or "")

    async def _read(self) -> None:
        error = _stream_error(grpc.StatusCode.UNAVAILABLE, "the member ended the stream")
        try:
            async for answer in self._call:
                if not self._waiting:
                    error = _stream_error(grpc.StatusCode.INTERNAL, "an answer nobody asked for")
                    break
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(answer)
        except grpc.aio.AioRpcError as err:
            error = err
            if err.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED):
                # The connection or the member went away mid-stream (see send()).
                error = _stream_error(
                    grpc.StatusCode.UNAVAILABLE, f"the stream broke: {err.details()}"
                )
        except asyncio.CancelledError:
            pass  # end() cancelled the call, or the Caller is closing
        finally:
            self.end(error)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _stream_error(code: grpc.StatusCode, details: str, leader: str = "") -> grpc.aio.AioRpcError:
    """An error as a unary Apply would have raised it, hint included."""
    trailing = grpc.aio.Metadata((LEADER_METADATA_KEY, leader))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


class _Batcher:
    """Concurrent calls share requests: while a request is out, new items wait and leave
    together in the next one (up to MAX_BATCH), when it comes back, as soon as they are
    WORTH_A_REQUEST, or once they have waited `patience` seconds (a request out may be
    retrying for its whole deadline); up to MAX_IN_FLIGHT requests out. `send` answers
    one request with a result or an exception per item, in order."""

    def __init__(
        self,
        send: Callable[[list[bytes]], Awaitable[Sequence[bytes | Exception]]],
        patience: float,
    ) -> None:
        self._send = send
        self._patience = patience
        self._waiting: list[tuple[bytes, asyncio.Future[bytes]]] = []
        self._waiting_bytes = 0
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._overdue: asyncio.TimerHandle | None = None

    def submit(self, item: bytes) -> asyncio.Future[bytes]:
        """The item's result to come. A future, not a coroutine: one frame less for
        each call to create and resume."""
        # The running loop's future: asyncio.Future() finds the loop in half the time
        # get_running_loop().create_future() takes, and this runs for every call.
        future: asyncio.Future[bytes] = asyncio.Future()
        waiting = self._waiting
        waiting.append((item, future))
        self._waiting_bytes += len(item)
        # Usually a request is out, the overdue timer is set and too few wait: nothing
        # to do, and no call to find that out.
        if (
            self._in_flight == 0
            or self._overdue is None
            or len(waiting) >= WORTH_A_REQUEST[0]
            or self._waiting_bytes >= WORTH_A_REQUEST[1]
        ):
            self._flush()
        return future

    def _flush(self) -> None:
        while self._waiting and (self._in_flight == 0 or self._another_request()):
            self._send_next()
        if self._waiting and self._overdue is None:
            loop = asyncio.get_running_loop()
            self._overdue = loop.call_later(self._patience, self._leave_overdue)

    def _leave_overdue(self) -> None:
        """What has waited `patience` leaves beside the requests out (some may be newer:
        at worst an extra request every `patience` seconds)."""
        self._overdue = None
        if self._waiting and self._in_flight < MAX_IN_FLIGHT:
            self._send_next()
        self._flush()

    def _send_next(self) -> None:
        if len(self._waiting) <= MAX_BATCH and self._waiting_bytes <= MAX_BATCH_BYTES:
            count, size = len(self._waiting), self._waiting_bytes  # all fits: no walk
        else:
            count, size = 0, 0
            for item, _ in self._waiting[:MAX_BATCH]:
                if count and size + len(item) > MAX_BATCH_BYTES:
                    break
                count, size = count + 1, size + len(item)
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        self._waiting_bytes -= size
        self._in_flight += 1
        task = asyncio.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _another_request(self) -> bool:
        """Whether what waits may leave beside the requests already out."""
        return self._in_flight < MAX_IN_FLIGHT and (
            len(self._waiting) >= WORTH_A_REQUEST[0] or self._waiting_bytes >= WORTH_A_REQUEST[1]
        )

    async def _run(self, batch: list[tuple[bytes, asyncio.Future[bytes]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
        except BaseException as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        finally:
            self._in_flight -= 1
            self._flush()
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            # bytes first, the usual case: this runs for every call
            if type(result) is not bytes and isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class BlockingCaller:
    """The Caller for synchronous code: the same methods, blocking.

    It runs a Caller on an event loop in a background thread; safe to share between
    threads. Arguments are those of Caller."""

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        wait_for_ready: bool = True,
    ) -> None:
        self._caller = Caller(
            targets,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            timeout=timeout,
            retry=retry,
            wait_for_ready=wait_for_ready,
        )
        self._loop = asyncio.new_event_loop()
        # A daemon thread, so a forgotten close() cannot keep the process alive.
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tinyraft-caller", daemon=True
        )
        self._thread.start()

    def apply(self, command: bytes) -> bytes:
        return self._run(self._caller.apply(command))

    def apply_many(self, commands: Sequence[bytes]) -> list[bytes]:
        return self._run(self._caller.apply_many(commands))

    def query(self, request: bytes, consistency: ConsistencyName = "linearizable") -> bytes:
        return self._run(self._caller.query(request, consistency))

    def status(self) -> Status:
        return self._run(self._caller.status())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._caller.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run[T](self, coroutine: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coroutine.close()
            raise TinyraftError("this BlockingCaller is closed; create a new one")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise


def _check_bytes(value: object, what: str = "commands") -> None:
    if type(value) is bytes:  # the common case, first: this runs for every call
        return
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} are bytes, not {type(value).__name__}: encode first")


def _check_targets(targets: str | Sequence[str]) -> list[str]:
    found = [targets] if isinstance(targets, str) else list(targets)
    if not found:
        raise ValueError("give at least one target: 'host:port' or 'dns:///name:port'")
    for target in found:
        if not isinstance(target, str) or not target or "," in target or target != target.strip():
            raise ValueError(
                f"a target is 'host:port' or 'dns:///name:port', not {target!r} "
                "(pass several as a list)"
            )
    return found


def _credentials(
    ca: str | Path | None, cert: str | Path | None, key: str | Path | None
) -> grpc.ChannelCredentials | None:
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise ValueError("tls_cert and tls_key go together: give both or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca is not None else None,
        private_key=Path(key).read_bytes() if key is not None else None,
        certificate_chain=Path(cert).read_bytes() if cert is not None else None,
    )


def _check_answers(got: int, errors: dict[int, str], asked: int, what: str) -> None:
    """A reply answers each item asked exactly once; refusals name one of them."""
    if got != asked or not all(0 <= p < asked for p in errors):
        raise TinyraftError(
            f"the cluster answered {got} results for {asked} {what} (refusals at "
            f"{sorted(errors)}); the member runs an incompatible tinyraft version"
        )


def _leader_hint(err: grpc.aio.AioRpcError) -> str | None:
    return _hint_in(err.trailing_metadata())


def _hint_in(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == LEADER_METADATA_KEY and value:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _typed_error(name: str, target: str, err: grpc.aio.AioRpcError) -> TinyraftError:
    code = err.code()
    details = err.details() or code.name
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(
            f"{name} rejected by {target}: {details}; fix the request (e.g. a command over "
            "the cluster's RAFT_MAX_COMMAND_BYTES): retrying it will not help",
            code,
        )
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(
            f"{name} refused by {target}: {details}; that member cannot serve it now (e.g. it "
            "is no longer a member): point the Caller at current members",
            code,
        )
    return TinyraftError(
        f"{name} failed at {target} with {code.name}: {details}; this is not retried "
        "(check TLS settings, versions and the member's log)",
        code,
    )
