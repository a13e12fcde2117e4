"""The Caller SDK's client logic against real gRPC servers on loopback.

The sidecar is not needed: FakeMember implements the Caller service and deduplicates
commands by (client_id, sequence) as the cluster does, and a test can script how it
answers each incoming call (abort with a status and leader hint, lose the reply, hold
it, refuse a command)."""

import asyncio
import contextlib
import datetime
import functools
import ipaddress
import math
import socket
import threading
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import tinyraft.caller
from tinyraft.caller import (
    LEADER_METADATA_KEY,
    BlockingCaller,
    Caller,
    CommandError,
    FailedPrecondition,
    InvalidArgument,
    RetryPolicy,
    Status,
    TinyraftError,
    Unavailable,
)
from tinyraft.v1 import caller_pb2, caller_pb2_grpc

FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05, deadline=10)

Action = Callable[
    ["FakeMember", caller_pb2.ApplyRequest, grpc.aio.ServicerContext], Awaitable[None]
]


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details


class OneRequest:
    """The context of one request on a FakeMember's ApplyStream."""

    leader = ""

    def set_trailing_metadata(self, metadata) -> None:
        self.leader = dict(metadata).get(LEADER_METADATA_KEY, "")

    async def abort(self, code, details, trailing_metadata=()):
        self.set_trailing_metadata(trailing_metadata or ((LEADER_METADATA_KEY, self.leader),))
        raise Refusal(code, details)


class FakeMember(caller_pb2_grpc.CallerServicer):
    def __init__(self) -> None:
        self.address = ""
        self.requests: list[caller_pb2.ApplyRequest] = []
        self.script: list[Action] = []  # one action per incoming Apply, in order
        self.log: list[bytes] = []  # payloads the state machine applied
        self.results: dict[tuple[int, int], bytes] = {}  # (client_id, sequence) -> result
        self.queries: list[caller_pb2.QueryBatchRequest] = []
        self.streams = 0  # ApplyStream calls
        self.unary_deadlines: list[float | None] = []  # time left of each unary Apply
        self._server: grpc.aio.Server | None = None

    async def start(self, credentials: grpc.ServerCredentials | None = None) -> "FakeMember":
        self._server = grpc.aio.server()
        caller_pb2_grpc.add_CallerServicer_to_server(self, self._server)
        if credentials is None:
            port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            port = self._server.add_secure_port("127.0.0.1:0", credentials)
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        await self._server.stop(None)

    @staticmethod
    def commands(request: caller_pb2.ApplyRequest) -> list[tuple[int, int, int, bytes]]:
        """(client_id, sequence, ack_below, payload) of each command, in either form."""
        if request.payloads:
            return [
                (request.client_id, seq, request.ack_below, p)
                for seq, p in enumerate(request.payloads, request.first_sequence)
            ]
        return [(c.client_id, c.sequence, c.ack_below, c.payload) for c in request.commands]

    def apply_now(self, request: caller_pb2.ApplyRequest) -> list[tuple[bytes, str]]:
        """(result, error) per command."""
        out = []
        for client_id, sequence, _, payload in self.commands(request):
            key = (client_id, sequence)
            if key not in self.results:  # a retry of an applied command is answered from cache
                self.log.append(payload)
                self.results[key] = b"ok:" + payload
            out.append((self.results[key], ""))
        return out

    async def Apply(self, request, context):
        self.requests.append(request)
        if not isinstance(context, OneRequest):
            self.unary_deadlines.append(context.time_remaining())
        if self.script:
            await self.script.pop(0)(self, request, context)
        results = self.apply_now(request)
        if request.payloads:
            return caller_pb2.ApplyResponse(
                packed_results=[r for r, _ in results],
                errors={i: e for i, (_, e) in enumerate(results) if e},
            )
        return caller_pb2.ApplyResponse(
            results=[caller_pb2.CommandResult(result=r, error=e) for r, e in results]
        )

    serves_streams = True  # False: a member from before ApplyStream and QueryStream

    async def ApplyStream(self, requests, context):
        async for answer in self.stream(
            requests, context, self.Apply, caller_pb2.ApplyStreamResponse
        ):
            yield answer

    async def QueryStream(self, requests, context):
        async for answer in self.stream(
            requests, context, self.QueryBatch, caller_pb2.QueryStreamResponse
        ):
            yield answer

    async def stream(self, requests, context, handle, answer):
        # In order, one at a time, each as the unary call; a refusal answers its own.
        self.streams += 1
        if not self.serves_streams:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        await context.send_initial_metadata(())
        async for request in requests:
            one = OneRequest()
            try:
                response = await handle(request, one)
            except Refusal as r:
                yield answer(code=r.code.value[0], message=r.details, leader=one.leader)
            else:
                yield answer(response=response, leader=one.leader)

    packs_answers = True  # False: a member from before the packed QueryBatch answer

    async def QueryBatch(self, request, context):
        self.queries.append(request)
        name = caller_pb2.Consistency.Name(request.consistency).encode()
        answers = [b"" if q == b"bad" else q + b"@" + name for q in request.requests]
        errors = {i: "no such question" for i, q in enumerate(request.requests) if q == b"bad"}
        if request.packed and self.packs_answers:
            return caller_pb2.QueryBatchResponse(answers=answers, errors=errors)
        return caller_pb2.QueryBatchResponse(
            results=[
                caller_pb2.QueryResult(answer=a, error=errors.get(i, ""))
                for i, a in enumerate(answers)
            ]
        )

    async def Status(self, request, context):
        return caller_pb2.StatusResponse(
            member_id="m1",
            cluster_id="c1",
            role="leader",
            term=3,
            leader_id="m1",
            leader_address=self.address,
            commit_index=7,
            applied_index=6,
            voters=["m1", "m2", "m3"],
        )

    def seen(self) -> list[tuple[int, int, int]]:
        """(client_id, sequence, ack_below) of every command received, in order."""
        return [c[:3] for r in self.requests for c in self.commands(r)]


def abort(code: grpc.StatusCode, details: str = "", leader: str = "") -> Action:
    async def action(member, request, context):
        metadata = ((LEADER_METADATA_KEY, leader),) if leader else ()
        await context.abort(code, details or code.name, trailing_metadata=metadata)

    return action


def lose_reply(seconds: float) -> Action:
    """Apply the commands, then answer too late: the client sees DEADLINE_EXCEEDED."""

    async def action(member, request, context):
        member.apply_now(request)
        await asyncio.sleep(seconds)

    return action


def wait_for(event: asyncio.Event) -> Action:
    async def action(member, request, context):
        await event.wait()

    return action


def async_test(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), timeout=60))

    return run


@contextlib.asynccontextmanager
async def members(count: int):
    started = [await FakeMember().start() for _ in range(count)]
    try:
        yield started
    finally:
        for member in started:
            await member.stop()


@async_test
async def test_unavailable_with_leader_hint_retries_at_the_leader_with_the_same_sequence():
    async with members(2) as (follower, leader):
        follower.script = [abort(grpc.StatusCode.UNAVAILABLE, "not the leader", leader.address)]
        async with Caller(follower.address, retry=FAST) as caller:
            assert await caller.apply(b"x") == b"ok:x"
            assert follower.seen() == leader.seen()  # same client id, sequence and ack_below
            client_id = follower.seen()[0][0]
            assert leader.seen() == [(client_id, 1, 1)]
            assert follower.log == [] and leader.log == [b"x"]
            # the leader is remembered: the next command goes straight there
            assert await caller.apply(b"y") == b"ok:y"
            assert len(follower.requests) == 1
            assert leader.seen()[-1] == (client_id, 2, 2)


@async_test
async def test_retry_after_deadline_exceeded_reuses_the_sequence_and_applies_once():
    async with members(1) as (member,):
        member.script = [lose_reply(5.0)]
        async with Caller(member.address, timeout=0.3, retry=FAST) as caller:
            assert await caller.apply(b"x") == b"ok:x"
        assert len(member.requests) == 2
        first, second = member.seen()
        assert first == second and first[1] == 1
        assert member.log == [b"x"]  # the retry was answered from the dedup cache


@async_test
async def test_resource_exhausted_is_retried_with_the_same_sequence():
    async with members(1) as (member,):
        member.script = [abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many pending")] * 2
        async with Caller(member.address, retry=FAST) as caller:
            assert await caller.apply(b"x") == b"ok:x"
        assert len(member.requests) == 3 and len(set(member.seen())) == 1
        assert member.log == [b"x"]


def test_ack_below_grows_as_answers_arrive(monkeypatch):
    # Every call its own request at once, as when calls pile up past WORTH_A_REQUEST.
    monkeypatch.setattr(tinyraft.caller, "WORTH_A_REQUEST", (1, 1))
    ack_below_grows_as_answers_arrive()


@async_test
async def ack_below_grows_as_answers_arrive():
    async with members(1) as (member,):
        # Unary calls, which can be answered out of order (a stream answers in order).
        member.serves_streams = False
        async with Caller(member.address, retry=FAST) as caller:
            for payload in (b"a", b"b", b"c"):
                await caller.apply(payload)
            assert [(seq, ack) for _, seq, ack in member.seen()] == [(1, 1), (2, 2), (3, 3)]

            release = asyncio.Event()
            member.script = [wait_for(release)]
            held = asyncio.create_task(caller.apply(b"held"))  # sequence 4, unanswered
            while len(member.requests) < 4:
                await asyncio.sleep(0.01)
            await caller.apply(b"e")  # 5
            await caller.apply(b"f")  # 6: 5 was answered, but 4 still is not
            release.set()
            assert await held == b"ok:held"
            await caller.apply_many([b"g", b"h"])  # 7 and 8 in one request
        assert [(seq, ack) for _, seq, ack in member.seen()[3:]] == [
            (4, 4),
            (5, 4),
            (6, 4),
            (7, 7),
            (8, 7),
        ]
        assert len(member.requests) == 7  # apply_many sent one request


@async_test
async def test_small_calls_wait_for_the_request_out_and_a_full_batch_goes_beside_it():
    """A request costs the cluster a round: while one is out, calls wait and leave
    together, and a second request goes beside it only once it is worth one."""
    worth = tinyraft.caller.WORTH_A_REQUEST[0]  # a full request
    async with members(1) as (member,):
        member.serves_streams = False  # unary: a member sees a request while one is held
        release = asyncio.Event()
        member.script = [wait_for(release)]
        async with Caller(member.address, retry=FAST) as caller:
            first = asyncio.create_task(caller.apply(b"first"))
            while not member.requests:
                await asyncio.sleep(0.01)
            rest = [asyncio.create_task(caller.apply(b"%d" % i)) for i in range(worth)]
            while len(member.requests) < 2:
                await asyncio.sleep(0.01)
            assert [c[3] for c in member.commands(member.requests[1])] == [
                b"%d" % i for i in range(worth)
            ]
            release.set()
            assert await first == b"ok:first"
            assert await asyncio.gather(*rest) == [b"ok:%d" % i for i in range(worth)]
        assert len(member.requests) == 2


@async_test
async def test_a_call_behind_a_request_that_keeps_retrying_leaves_after_one_timeout():
    """A call waits for the request out, but not for that request's whole retry
    deadline (30 s here): after one attempt's timeout it leaves beside it."""
    loop = asyncio.get_running_loop()
    async with members(1) as (member,):
        member.serves_streams = False  # unary: a member sees a request while one is held
        release = asyncio.Event()
        member.script = [wait_for(release)] * 100  # every attempt is held past its timeout
        patient = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, deadline=30)
        async with Caller(member.address, timeout=0.5, retry=patient) as caller:
            first = asyncio.create_task(caller.apply(b"first"))
            while not member.requests:
                await asyncio.sleep(0.01)
            second = asyncio.create_task(caller.apply(b"second"))
            give_up = loop.time() + 10
            while not any(c[3] == b"second" for r in member.requests for c in member.commands(r)):
                assert loop.time() < give_up, "the second call waited behind the first"
                await asyncio.sleep(0.01)
            release.set()
            assert await first == b"ok:first"
            assert await second == b"ok:second"


@async_test
async def test_an_attempt_with_less_than_the_timeout_left_tells_the_member_its_own_deadline():
    """A stream tells the member the Caller's whole timeout once; the last attempt,
    with less time left, goes as a unary call whose deadline the member sees."""
    async with members(1) as (member,):
        member.script = [lose_reply(5.0)]  # the streamed attempt runs out its 1 s
        short = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, deadline=1.9)
        async with Caller(member.address, timeout=1.0, retry=short) as caller:
            assert await caller.apply(b"x") == b"ok:x"  # the retry, answered from the cache
        assert member.streams == 1 and len(member.requests) == 2
        assert len(member.unary_deadlines) == 1
        left = member.unary_deadlines[0]
        assert left is not None and left < 0.95, left


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan])
def test_a_caller_timeout_must_be_positive_and_finite(timeout):
    with pytest.raises(ValueError, match="timeout must be a positive, finite number of seconds"):
        Caller("127.0.0.1:1", timeout=timeout)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
    ],
)
@async_test
async def test_refusals_raise_typed_errors_without_retry(code, error):
    async with members(1) as (member,):
        member.script = [abort(code, "command too large")]
        async with Caller(member.address, retry=FAST) as caller:
            with pytest.raises(error, match="command too large") as caught:
                await caller.apply(b"x")
            assert caught.value.code == code
            assert len(member.requests) == 1 and member.log == []


@async_test
async def test_retries_run_out_as_unavailable_and_the_session_is_left_behind():
    async with members(1) as (member,):
        async with Caller(member.address, retry=FAST) as caller:
            await caller.apply(b"a")
            member.script = [abort(grpc.StatusCode.UNAVAILABLE, "no leader")] * 5
            with pytest.raises(Unavailable, match="no leader") as caught:
                await caller.apply(b"b")
            assert "5 attempts" in str(caught.value)
            await caller.apply(b"c")
        seen = member.seen()
        assert len(seen) == 7 and len(set(seen[1:6])) == 1  # every attempt: sequence 2
        old_client, new_client = seen[0][0], seen[6][0]
        # sequence 2's outcome is unknown, so it is never acknowledged; rather than pin
        # ack_below in the old session, the Caller numbers later commands in a new one
        assert new_client != old_client and seen[6][1:] == (1, 1)


class RefusingMember(FakeMember):
    """Refuses the second command of every request, as the cluster does with e.g. an
    expired session: the command is answered with an error and not applied."""

    def apply_now(self, request):
        results = super().apply_now(request)
        if len(results) > 1:
            results[1] = (b"", "session expired")
        return results


@async_test
async def test_a_refused_command_raises_command_error_and_later_ones_use_a_new_session():
    member = await RefusingMember().start()
    try:
        async with Caller(member.address, retry=FAST) as caller:
            with pytest.raises(CommandError, match="session expired") as caught:
                await caller.apply_many([b"a", b"b", b"c"])
            assert caught.value.position == 1 and caught.value.error == "session expired"
            await caller.apply(b"d")
        seen = member.seen()
        # an expired session would refuse every later command, so the Caller starts anew
        assert seen[-1][1:] == (1, 1) and seen[-1][0] != seen[0][0]
    finally:
        await member.stop()


class OldMember(FakeMember):
    """A member from before the packed Apply form: it sees no commands in one."""

    async def Apply(self, request, context):
        if not request.commands:
            self.requests.append(request)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "commands: at least one command is required"
            )
        return await super().Apply(request, context)


@async_test
async def test_an_older_member_gets_the_commands_in_the_form_it_knows():
    member = await OldMember().start()
    try:
        async with Caller(member.address, retry=FAST) as caller:
            assert await caller.apply_many([b"a", b"b"]) == [b"ok:a", b"ok:b"]
            assert await caller.apply(b"c") == b"ok:c"
        assert member.log == [b"a", b"b", b"c"]
        # Refused once in the packed form, then the same sequence numbers the old way.
        assert [bool(r.payloads) for r in member.requests] == [True, False, False]
        assert [seq for _, seq, _ in member.seen()] == [1, 2, 1, 2, 3]
    finally:
        await member.stop()


@async_test
async def test_calls_go_on_one_stream_each_or_unary_to_a_member_without_them():
    async with members(2) as (new, old):
        old.serves_streams = False
        for member in (new, old):
            # One attempt is enough: an older member's refusal of the stream is not one.
            async with Caller(member.address, retry=RetryPolicy(max_attempts=1)) as caller:
                results = await asyncio.gather(*(caller.apply(b"%d" % i) for i in range(50)))
                assert results == [b"ok:%d" % i for i in range(50)]
                answers = await asyncio.gather(*(caller.query(b"%d" % i) for i in range(50)))
                assert answers == [b"%d@CONSISTENCY_LINEARIZABLE" % i for i in range(50)]
            assert sorted(member.log) == sorted(b"%d" % i for i in range(50)), member.seen()
        assert new.streams == 2 and old.streams == 2  # each refused once, then unary


@async_test
async def test_an_older_member_turns_streams_off_for_itself_only():
    """A rolling upgrade: the member from before the streams is called unary, while the
    Caller keeps its stream to the upgraded one."""
    async with members(2) as (new, old):
        old.serves_streams = False
        old.script = [abort(grpc.StatusCode.UNAVAILABLE, "not the leader", leader=new.address)]
        async with Caller(old.address, retry=FAST) as caller:
            assert await caller.apply(b"a") == b"ok:a"
            assert await caller.apply(b"b") == b"ok:b"
        assert (old.streams, len(old.requests)) == (1, 1)  # refused the stream, then unary
        assert new.streams == 1 and new.log == [b"a", b"b"]


@async_test
async def test_close_ends_a_call_that_is_retrying_and_leaves_nothing_open():
    async with members(1) as (member,):
        member.script = [abort(grpc.StatusCode.UNAVAILABLE, "busy")] * 10_000
        patient = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, deadline=30)
        caller = Caller(member.address, retry=patient)
        pending = asyncio.create_task(caller.apply(b"x"))
        while len(member.requests) < 3:
            await asyncio.sleep(0.01)
        await caller.close()
        with pytest.raises(TinyraftError, match="closed"):
            await pending
        assert not caller._streams and not caller._channels
        assert member.log == []


@async_test
async def test_the_packed_form_carries_one_sessions_consecutive_commands():
    async with members(1) as (member,):
        async with Caller(member.address, retry=FAST) as caller:
            assert await caller.apply_many([b"a", b"b", b"c"]) == [b"ok:a", b"ok:b", b"ok:c"]
        [request] = member.requests
        assert not request.commands and list(request.payloads) == [b"a", b"b", b"c"]
        assert request.client_id != 0 and (request.first_sequence, request.ack_below) == (1, 1)


@async_test
async def test_many_concurrent_applies_get_distinct_sequences():
    async with members(1) as (member,):
        async with Caller(member.address, retry=FAST) as caller:
            payloads = [str(i).encode() for i in range(200)]
            results = await asyncio.gather(*(caller.apply(p) for p in payloads))
            assert results == [b"ok:" + p for p in payloads]
            await caller.apply(b"last")
        seen = member.seen()
        assert sorted(seq for _, seq, _ in seen) == list(range(1, 202))
        assert seen[-1][1:] == (201, 201)


@async_test
async def test_an_unreachable_target_is_skipped():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    async with members(1) as (member,):
        for order in ([dead, member.address], [member.address, dead]):
            async with Caller(order, timeout=0.3, retry=FAST) as caller:
                assert await caller.apply(b"x") == b"ok:x"


@async_test
async def test_a_leader_that_goes_down_is_not_waited_for():
    async with members(2) as (leader, follower):
        # Every call reaches the leader through the follower's hint, as in a cluster.
        follower.script = [abort(grpc.StatusCode.UNAVAILABLE, "not the leader", leader.address)]
        patient = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, deadline=10)
        async with Caller([follower.address], timeout=60, retry=patient) as caller:
            assert await caller.apply(b"a") == b"ok:a"
            await leader.stop()
            # wait_for_ready would hold this attempt on the dead leader until the
            # policy's deadline; once the cluster has answered, down means move on.
            assert await caller.apply(b"b") == b"ok:b"
        assert follower.log == [b"b"]


@pytest.mark.parametrize("streams", [True, False])
@async_test
async def test_a_write_forwarded_by_a_follower_sends_the_next_ones_to_the_leader(streams):
    async with members(2) as (leader, follower):

        async def forwarded(member, request, context):  # answered, naming the leader
            context.set_trailing_metadata(((LEADER_METADATA_KEY, leader.address),))

        follower.script = [forwarded]
        follower.serves_streams = leader.serves_streams = streams
        async with Caller([follower.address], retry=FAST) as caller:
            assert await caller.apply(b"a") == b"ok:a"
            assert await caller.apply(b"b") == b"ok:b"
        assert follower.log == [b"a"] and leader.log == [b"b"]


class ShortMember(FakeMember):
    """Answers one result too few, and a refusal outside the request."""

    async def Apply(self, request, context):
        return caller_pb2.ApplyResponse(packed_results=[b"x"], errors={7: "?"})

    async def QueryBatch(self, request, context):
        return caller_pb2.QueryBatchResponse(answers=[b"a", b"b"], errors={5: "?"})


@async_test
async def test_an_answer_that_does_not_match_the_request_is_an_error_not_a_guess():
    member = await ShortMember().start()
    try:
        async with Caller(member.address, retry=FAST) as caller:
            with pytest.raises(TinyraftError, match="incompatible tinyraft version"):
                await caller.apply_many([b"a", b"b"])
            with pytest.raises(TinyraftError, match="incompatible tinyraft version"):
                await asyncio.gather(caller.query(b"p"), caller.query(b"q"))
    finally:
        await member.stop()


@async_test
async def test_dns_target():
    async with members(1) as (member,):
        port = member.address.rsplit(":", 1)[1]
        async with Caller(f"dns:///localhost:{port}", retry=FAST) as caller:
            assert await caller.apply(b"x") == b"ok:x"


@async_test
async def test_query_and_status():
    async with members(1) as (member,), Caller(member.address, retry=FAST) as caller:
        assert await caller.query(b"q") == b"q@CONSISTENCY_LINEARIZABLE"
        assert await caller.query(b"q", "lease") == b"q@CONSISTENCY_LEASE"
        assert await caller.query(b"q", consistency="stale") == b"q@CONSISTENCY_STALE"
        with pytest.raises(ValueError, match="'linearizable', 'lease' or 'stale'"):
            await caller.query(b"q", "strong")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="'linearizable', 'lease' or 'stale'"):
            await caller.query(b"q", "strong")  # type: ignore[arg-type]  # still, not cached
        for bytes_like in (bytearray(b"q"), memoryview(b"q")):  # go as bytes
            assert await caller.query(bytes_like) == b"q@CONSISTENCY_LINEARIZABLE"  # type: ignore[arg-type]
        assert len(member.queries) == 5
        status = await caller.status()
        assert status == Status(
            member_id="m1",
            cluster_id="c1",
            role="leader",
            term=3,
            leader_id="m1",
            leader_address=member.address,
            commit_index=7,
            applied_index=6,
            voters=("m1", "m2", "m3"),
            learners=(),
        )


@pytest.mark.parametrize("packs_answers", [True, False], ids=["packed", "older member"])
@async_test
async def test_concurrent_queries_share_requests_and_keep_their_own_answers(packs_answers):
    async with members(1) as (member,), Caller(member.address, retry=FAST) as caller:
        member.packs_answers = packs_answers
        questions = [f"q{i}".encode() for i in range(200)]
        answers = await asyncio.gather(*(caller.query(q, "lease") for q in questions))
        assert answers == [q + b"@CONSISTENCY_LEASE" for q in questions]
        assert len(member.queries) < 20  # batched: not one request per query
        assert {r.consistency for r in member.queries} == {caller_pb2.CONSISTENCY_LEASE}
        # a question the Module refuses fails alone; the others in its request succeed
        good, bad = await asyncio.gather(
            caller.query(b"fine"), caller.query(b"bad"), return_exceptions=True
        )
        assert good == b"fine@CONSISTENCY_LINEARIZABLE"
        assert isinstance(bad, InvalidArgument) and "no such question" in str(bad)


@async_test
async def test_bad_input_is_rejected_before_any_call():
    async with members(1) as (member,):
        async with Caller(member.address, retry=FAST) as caller:
            with pytest.raises(TypeError, match="bytes"):
                await caller.apply("text")  # type: ignore[arg-type]
            assert await caller.apply_many([]) == []
        assert member.requests == []
        with pytest.raises(TinyraftError, match="closed"):
            await caller.apply(b"x")
    for targets in ([], "a:1,b:2", " a:1"):
        with pytest.raises(ValueError, match="target"):
            Caller(targets)
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        Caller("a:1", tls_cert="cert.pem")


@contextlib.contextmanager
def member_in_thread():
    """A FakeMember on its own event loop, for tests written as plain synchronous code."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    member = asyncio.run_coroutine_threadsafe(FakeMember().start(), loop).result()
    try:
        yield member
    finally:
        asyncio.run_coroutine_threadsafe(member.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_blocking_caller_from_synchronous_code():
    with member_in_thread() as member:
        with BlockingCaller(member.address, retry=FAST) as caller:
            assert caller.apply(b"x") == b"ok:x"
            assert caller.apply_many([b"y", b"z"]) == [b"ok:y", b"ok:z"]
            assert caller.query(b"q", "stale") == b"q@CONSISTENCY_STALE"
            assert caller.status().role == "leader"
            member.script = [abort(grpc.StatusCode.INVALID_ARGUMENT, "too large")]
            with pytest.raises(InvalidArgument, match="too large"):
                caller.apply(b"big")
            # several threads share one BlockingCaller
            threads = [threading.Thread(target=caller.apply, args=(b"t",)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        caller.close()  # closing twice is harmless
        with pytest.raises(TinyraftError, match="closed"):
            caller.apply(b"x")
        sequences = [seq for _, seq, _ in member.seen()]
        assert sequences[:4] == [1, 2, 3, 4] and member.log.count(b"t") == 8


def make_pki(tmp_path):
    """A CA, and a server and a client certificate it signed, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(name, issuer_name, issuer_key, ca=False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        (tmp_path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return key

    ca_key = issue("ca", "ca", None, ca=True)
    issue("server", "ca", ca_key, san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    issue("client", "ca", ca_key, san=[x509.DNSName("client")])
    return {
        name: tmp_path / name
        for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    }


@async_test
async def test_mutual_tls(tmp_path):
    pki = make_pki(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [(pki["server.key"].read_bytes(), pki["server.crt"].read_bytes())],
        root_certificates=pki["ca.crt"].read_bytes(),
        require_client_auth=True,
    )
    member = await FakeMember().start(credentials)
    try:
        tls = {"tls_ca": pki["ca.crt"], "tls_cert": pki["client.crt"], "tls_key": pki["client.key"]}
        async with Caller(member.address, retry=FAST, **tls) as caller:
            assert await caller.apply(b"x") == b"ok:x"
        # without a client certificate the member refuses the connection
        once = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01, deadline=5)
        async with Caller(member.address, tls_ca=pki["ca.crt"], timeout=1, retry=once) as caller:
            with pytest.raises(Unavailable):
                await caller.apply(b"y")
        assert member.log == [b"x"]
    finally:
        await member.stop()


def test_backoff_polls_quickly_for_a_new_leader_but_slowly_when_overloaded() -> None:
    policy = RetryPolicy()
    leader_lost = [policy.backoff(n) for n in range(1, 12)]
    overloaded = [policy.backoff(n, overloaded=True) for n in range(1, 12)]
    # a leader change is over in one or two election timeouts: never sleep long
    assert max(leader_lost) <= policy.max_backoff <= 0.1
    # an overloaded member is given room: the waits grow towards overload_backoff
    assert policy.overload_backoff / 2 <= overloaded[-1] <= policy.overload_backoff
    with pytest.raises(ValueError, match="max_backoff <= overload_backoff"):
        RetryPolicy(max_backoff=3.0, overload_backoff=2.0)


class OlderMember(FakeMember):
    """A member from before QueryBatch: it answers queries one at a time."""

    QueryBatch = caller_pb2_grpc.CallerServicer.QueryBatch  # UNIMPLEMENTED
    serves_streams = False

    async def Query(self, request, context):
        self.queries.append(request)
        if request.request == b"bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no such question")
        return caller_pb2.QueryResponse(answer=request.request + b"!")


@async_test
async def test_queries_fall_back_to_one_by_one_on_a_member_without_query_batch():
    member = await OlderMember().start()
    try:
        async with Caller(member.address, retry=FAST) as caller:
            for _ in range(2):  # the second time straight to Query
                good, bad = await asyncio.gather(
                    caller.query(b"q"), caller.query(b"bad"), return_exceptions=True
                )
                assert good == b"q!"
                assert isinstance(bad, InvalidArgument) and "no such question" in str(bad)
    finally:
        await member.stop()


@async_test
async def test_requests_stay_under_the_byte_cap_and_queries_must_be_bytes():
    from tinyraft.caller import MAX_BATCH_BYTES

    async with members(1) as (member,), Caller(member.address, retry=FAST) as caller:
        big = [bytes([i]) * (1 << 20) for i in range(12)]  # 12 MiB at once
        assert await asyncio.gather(*(caller.apply(c) for c in big)) == [b"ok:" + c for c in big]
        sizes = [sum(len(c[3]) for c in member.commands(r)) for r in member.requests]
        assert len(sizes) > 3 and max(sizes) <= MAX_BATCH_BYTES
        with pytest.raises(TypeError, match="queries are bytes, not int"):
            await caller.query(5)  # type: ignore[arg-type]
