"""The Module SDK over real gRPC on loopback, driven with the generated stub as the
sidecar would drive it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from tinyraft.module import CHUNK_BYTES, ListenError, Module, _rechunk, serve_module
from tinyraft.v1 import module_pb2 as pb
from tinyraft.v1 import module_pb2_grpc as pb_grpc

TIMEOUT = 10.0


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


@contextlib.asynccontextmanager
async def serving_at(
    module: Module, address: str = "127.0.0.1:0", grace: float = 5.0
) -> AsyncIterator[str]:
    """serve_module, by default on a port the OS picks (port 0: no race with other
    tests); another address restarts a Module where a client knows it."""
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    served = serve_module(module, address, ready=bound.set_result, grace=grace)
    task = asyncio.create_task(served)
    waiting: set[asyncio.Future[Any]] = {task, bound}
    await asyncio.wait(waiting, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raise its error
    assert bound.done(), "serve_module did not report ready"
    try:
        yield bound.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def client_of(servicer: pb_grpc.ModuleServicer) -> AsyncIterator[Any]:
    """The sidecar's ModuleClient of a hand-written servicer (a Module in another
    language, or another version of the contract) on a port the OS picks."""
    from tinyraft.server.module_client import ModuleClient

    server = grpc.aio.server()
    pb_grpc.add_ModuleServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = ModuleClient(f"127.0.0.1:{port}")
    try:
        yield client
    finally:
        await client.close()
        await server.stop(None)


@contextlib.asynccontextmanager
async def serving(module: Module) -> AsyncIterator[tuple[pb_grpc.ModuleStub, grpc.aio.Channel]]:
    async with serving_at(module) as address, grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.ModuleStub(channel), channel


class Journal(Module):
    """Records every command; commands starting with b"boom" raise before mutating."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, bytes]] = []

    def apply(self, command: bytes, index: int) -> bytes:
        if command.startswith(b"boom"):
            raise ValueError(f"cannot apply {command.decode()}")
        self.entries.append((index, command))
        return b"ok %d %s" % (index, command)

    def query(self, request: bytes) -> bytes:
        if request == b"len":
            return str(len(self.entries)).encode()
        raise ValueError(f"unknown query {request.decode()}")

    def snapshot(self) -> Iterator[bytes]:
        for index, command in self.entries:  # a generator: the SDK re-chunks it
            yield b"%d %s\n" % (index, command.hex().encode())

    def restore(self, data: bytes) -> None:
        entries = []
        for line in data.splitlines():
            index, command = line.split()
            entries.append((int(index), bytes.fromhex(command.decode())))
        self.entries = entries


def batch(after: int, *commands: tuple[int, bytes]) -> pb.ApplyBatchRequest:
    last = max([after, *(index for index, _ in commands)])
    entries = [pb.ModuleEntry(index=i, command=c) for i, c in commands]
    return pb.ApplyBatchRequest(after_index=after, entries=entries, last_index=last)


@run_async
async def test_apply_runs_entries_in_order_with_one_result_each() -> None:
    module = Journal()
    async with serving(module) as (stub, _):
        reply = await stub.Apply(batch(0, (1, b"a"), (2, b"b"), (2, b"c")), timeout=TIMEOUT)
        assert [r.result for r in reply.results] == [b"ok 1 a", b"ok 2 b", b"ok 2 c"]
        reply = await stub.Apply(batch(2, (3, b"d")), timeout=TIMEOUT)
        assert [r.result for r in reply.results] == [b"ok 3 d"]
        # An entry-less batch (e.g. a membership entry) still advances the index.
        empty = pb.ApplyBatchRequest(after_index=3, last_index=4)
        assert not (await stub.Apply(empty, timeout=TIMEOUT)).results
        info = await stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
    assert info.applied_index == 4
    assert module.entries == [(1, b"a"), (2, b"b"), (2, b"c"), (3, b"d")]


@run_async
async def test_apply_after_the_wrong_index_is_refused_and_applies_nothing() -> None:
    module = Journal()
    async with serving(module) as (stub, _):
        await stub.Apply(batch(0, (1, b"a"), (2, b"b")), timeout=TIMEOUT)
        for wrong in (0, 1, 7):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Apply(batch(wrong, (8, b"x")), timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "index 2" in refused.value.details()
            assert f"after_index {wrong}" in refused.value.details()
        info = await stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
    assert info.applied_index == 2
    assert module.entries == [(1, b"a"), (2, b"b")]


@run_async
async def test_an_exception_in_apply_is_that_commands_result_and_the_batch_goes_on() -> None:
    module = Journal()
    async with serving(module) as (stub, _):
        reply = await stub.Apply(batch(0, (1, b"a"), (2, b"boom"), (3, b"c")), timeout=TIMEOUT)
        info = await stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
    first, failed, last = (r.result for r in reply.results)
    assert (first, last) == (b"ok 1 a", b"ok 3 c")
    assert json.loads(failed) == {"error": "ValueError: cannot apply boom"}
    assert module.entries == [(1, b"a"), (3, b"c")]
    assert info.applied_index == 3


@run_async
async def test_snapshot_restores_into_another_server_with_state_and_index() -> None:
    source = Journal()
    big = bytes(range(256)) * 4  # 1 KiB, 2 KiB once hex-encoded in the snapshot
    async with serving(source) as (stub, _):
        commands = [(i, big + str(i).encode()) for i in range(1, 101)]
        await stub.Apply(batch(0, *commands), timeout=TIMEOUT)
        chunks = [c async for c in stub.Snapshot(pb.ModuleSnapshotRequest(), timeout=TIMEOUT)]
    assert len(chunks) > 1, "the state should span several chunks"
    assert all(len(c.data) <= CHUNK_BYTES for c in chunks)
    assert chunks[0].index == 100

    copy = Journal()
    async with serving(copy) as (stub, _):
        restore = (pb.RestoreChunk(data=c.data, index=c.index) for c in chunks)
        await stub.Restore(restore, timeout=TIMEOUT)
        info = await stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
        # Restored at 100, it accepts the next batch right after.
        reply = await stub.Apply(batch(100, (101, b"next")), timeout=TIMEOUT)
    assert info.applied_index == 100
    assert copy.entries == [*source.entries, (101, b"next")]
    assert reply.results[0].result == b"ok 101 next"


@run_async
async def test_an_empty_state_snapshots_as_one_chunk_carrying_the_index() -> None:
    async with serving(Journal()) as (stub, _):
        await stub.Apply(pb.ApplyBatchRequest(after_index=0, last_index=5), timeout=TIMEOUT)
        chunks = [c async for c in stub.Snapshot(pb.ModuleSnapshotRequest(), timeout=TIMEOUT)]
    assert [(c.data, c.index) for c in chunks] == [(b"", 5)]


@run_async
async def test_a_failed_restore_keeps_the_old_state_and_index() -> None:
    module = Journal()
    async with serving(module) as (stub, _):
        await stub.Apply(batch(0, (1, b"a")), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Restore(iter([pb.RestoreChunk(data=b"not a journal", index=9)]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "module restore failed" in refused.value.details()
        info = await stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
    assert info.applied_index == 1
    assert module.entries == [(1, b"a")]


@run_async
async def test_each_server_instance_has_its_own_instance_id() -> None:
    async with serving(Journal()) as (one, _), serving(Journal()) as (two, _):
        first = await one.Info(pb.InfoRequest(), timeout=TIMEOUT)
        second = await two.Info(pb.InfoRequest(), timeout=TIMEOUT)
        again = await one.Info(pb.InfoRequest(), timeout=TIMEOUT)
    assert first.instance_id and second.instance_id
    assert first.instance_id != second.instance_id
    assert again.instance_id == first.instance_id
    assert first.applied_index == second.applied_index == 0


@run_async
async def test_query_answers_and_its_errors_are_invalid_argument() -> None:
    async with serving(Journal()) as (stub, _):
        await stub.Apply(batch(0, (1, b"a")), timeout=TIMEOUT)
        reply = await stub.Query(pb.ModuleQueryRequest(request=b"len"), timeout=TIMEOUT)
        assert reply.answer == b"1"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Query(pb.ModuleQueryRequest(request=b"what"), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "unknown query what"


@run_async
async def test_query_batch_answers_each_question_and_refuses_only_the_bad_one() -> None:
    async with serving(Journal()) as (stub, _):
        await stub.Apply(batch(0, (1, b"a"), (2, b"b")), timeout=TIMEOUT)
        reply = await stub.QueryBatch(
            pb.ModuleQueryBatchRequest(requests=[b"len", b"what", b"len"], min_index=2),
            timeout=TIMEOUT,
        )
        assert [(r.answer, r.error) for r in reply.results] == [
            (b"2", ""),
            (b"", "unknown query what"),
            (b"2", ""),
        ]
        packed = await stub.QueryBatch(  # the form the sidecar asks for
            pb.ModuleQueryBatchRequest(
                requests=[b"len", b"what", b"len"], min_index=2, packed=True
            ),
            timeout=TIMEOUT,
        )
        assert not packed.results and list(packed.answers) == [b"2", b"", b"2"]
        assert dict(packed.errors) == {1: "unknown query what"}
        with pytest.raises(grpc.aio.AioRpcError) as behind:
            await stub.QueryBatch(
                pb.ModuleQueryBatchRequest(requests=[b"len"], min_index=3), timeout=TIMEOUT
            )
    assert behind.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@run_async
async def test_the_sidecar_speaks_the_older_contract_to_a_module_written_for_it() -> None:
    """A Module without QueryBatch and without the packed Apply form still works."""

    class OldModule(pb_grpc.ModuleServicer):  # QueryBatch left UNIMPLEMENTED
        async def Apply(self, request: Any, context: Any) -> pb.ApplyBatchResponse:
            results = [b"%d:%s" % (e.index, e.command) for e in request.entries]
            return pb.ApplyBatchResponse(results=[pb.ApplyResult(result=r) for r in results])

        async def Info(self, request: Any, context: Any) -> pb.InfoResponse:
            return pb.InfoResponse(instance_id="old")  # says nothing of packed_apply

        async def Query(self, request: Any, context: Any) -> pb.ModuleQueryResponse:
            if request.request == b"what":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown query what")
            return pb.ModuleQueryResponse(answer=b"answer to " + request.request)

    async with client_of(OldModule()) as client:
        await client.info()
        assert await client.apply(0, [1, 1, 2], [b"a", b"b", b"c"], 2) == [b"1:a", b"1:b", b"2:c"]
        for _ in range(2):  # the second time, straight to Query
            answers, errors = await client.query_batch([b"a", b"what", b"b"], TIMEOUT, 0)
            assert answers == [b"answer to a", b"", b"answer to b"]
            assert errors == {1: "unknown query what"}


@run_async
async def test_the_sidecar_sends_the_packed_form_to_a_module_that_takes_it() -> None:
    from tinyraft.server.module_client import ModuleClient

    module = Journal()
    async with serving_at(module) as address:
        client = ModuleClient(address)
        try:
            assert (await client.info()).packed_apply and client.packed_apply
            results = await client.apply(0, [1, 2, 2], [b"a", b"boom", b"c"], 3)
            assert results[0] == b"ok 1 a" and results[2] == b"ok 2 c"
            assert json.loads(results[1]) == {"error": "ValueError: cannot apply boom"}
            stub = client.stub  # a packed request must carry one index per command
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                request = pb.ApplyBatchRequest(
                    after_index=3, commands=[b"x", b"y"], indexes=[4], last_index=4
                )
                await stub.Apply(request, timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "one index per command" in refused.value.details()
        finally:
            await client.close()
    assert module.entries == [(1, b"a"), (2, b"c")]


@run_async
async def test_the_sidecar_applies_on_one_stream_that_outlives_a_refusal() -> None:
    """The SDK serves ApplyStream and says so; the sidecar's client sends its applies
    there. A refusal ends the stream with Apply's status, and the next apply opens a
    new one. (A Module killed and restarted under a live cluster: tests/test_chaos.)"""
    from tinyraft.server.module_client import ModuleClient, ModuleOutOfSync

    module = Journal()
    async with serving_at(module) as address:
        client = ModuleClient(address)
        try:
            assert (await client.info()).apply_stream and client.apply_stream
            assert await client.apply(0, [1], [b"a"], 1) == [b"ok 1 a"]
            assert await client.apply(1, [2, 2], [b"b", b"boom"], 2) == [
                b"ok 2 b",
                b'{"error":"ValueError: cannot apply boom"}',
            ]
            with pytest.raises(ModuleOutOfSync, match="index 2"):
                await client.apply(5, [6], [b"x"], 6)
            assert await client.apply(2, [3], [b"c"], 3) == [b"ok 3 c"]
        finally:
            await client.close()
    assert module.entries == [(1, b"a"), (2, b"b"), (3, b"c")]


@run_async
async def test_a_module_that_says_apply_stream_but_lacks_it_still_gets_its_applies() -> None:
    """A Module may restart as another version than the one that answered Info: an
    ApplyStream it does not serve (UNIMPLEMENTED) sends the sidecar back to Apply."""

    class Boastful(pb_grpc.ModuleServicer):  # ApplyStream left UNIMPLEMENTED
        async def Apply(self, request: Any, context: Any) -> pb.ApplyBatchResponse:
            return pb.ApplyBatchResponse(packed_results=[b"unary " + c for c in request.commands])

        async def Info(self, request: Any, context: Any) -> pb.InfoResponse:
            return pb.InfoResponse(instance_id="new", packed_apply=True, apply_stream=True)

    async with client_of(Boastful()) as client:
        await client.info()
        for n in range(2):  # the second time, straight to Apply
            assert await client.apply(n, [n + 1], [b"x"], n + 1) == [b"unary x"]
        assert not client.apply_stream


@run_async
async def test_grpc_health_reports_serving() -> None:
    async with serving(Journal()) as (_, channel):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tinyraft.v1.Module"):
            request = health_pb2.HealthCheckRequest(service=service)
            reply = await health.Check(request, timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@run_async
async def test_a_malformed_or_taken_address_raises_listen_error() -> None:
    for malformed in ("nonsense", "127.0.0.1:", "127.0.0.1:99999", ":80"):
        with pytest.raises(ListenError, match="HOST:PORT"):
            await serve_module(Journal(), malformed)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match="in use"):
            await serve_module(Journal(), f"127.0.0.1:{port}")


@run_async
async def test_a_snapshot_reader_that_goes_away_does_not_block_apply() -> None:
    module = Journal()
    module.entries = [(1, bytes(1024))] * 20_000  # ~40 MB of snapshot: more than gRPC buffers
    async with serving(module) as (stub, _):
        await stub.Apply(pb.ApplyBatchRequest(after_index=0, last_index=1), timeout=TIMEOUT)
        call = stub.Snapshot(pb.ModuleSnapshotRequest(), timeout=TIMEOUT)
        first = await call.read()
        assert first.index == 1
        call.cancel()
        reply = await stub.Apply(batch(1, (2, b"after")), timeout=TIMEOUT)
    assert reply.results[0].result == b"ok 2 after"


@given(
    pieces=st.lists(st.binary(max_size=40), max_size=12),
    size=st.integers(min_value=1, max_value=16),
)
def test_snapshots_are_cut_into_full_chunks_whatever_the_pieces(
    pieces: list[bytes], size: int
) -> None:
    chunks = list(_rechunk(pieces, size))
    assert b"".join(chunks) == b"".join(pieces)
    assert all(len(c) == size for c in chunks[:-1])
    assert all(0 < len(c) <= size for c in chunks)
    assert list(_rechunk(b"".join(pieces), size)) == chunks
