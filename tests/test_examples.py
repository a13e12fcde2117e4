"""The example Modules over real gRPC, and their runner as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyraft.examples.cli import main_example
from tinyraft.examples.kv import KvModule, _dump
from tinyraft.examples.wordtracker import WordTrackerModule
from tinyraft.module import Module, serve_module
from tinyraft.v1 import module_pb2 as pb
from tinyraft.v1 import module_pb2_grpc as pb_grpc

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parent.parent


class Client:
    """What the sidecar does: Apply batches in order, Query, Snapshot, Restore."""

    def __init__(self, stub: pb_grpc.ModuleStub) -> None:
        self.stub = stub
        self.index = 0

    async def apply(self, *commands: Any) -> list[Any]:
        """Apply JSON-encoded commands (bytes pass through as they are) in one batch."""
        raw = [c if isinstance(c, bytes) else json.dumps(c).encode() for c in commands]
        entries = [pb.ModuleEntry(index=self.index + 1, command=c) for c in raw]
        request = pb.ApplyBatchRequest(
            after_index=self.index, entries=entries, last_index=self.index + 1
        )
        reply = await self.stub.Apply(request, timeout=TIMEOUT)
        self.index += 1
        return [r.result for r in reply.results]

    async def query(self, request: Any) -> bytes:
        raw = request if isinstance(request, bytes) else json.dumps(request).encode()
        reply = await self.stub.Query(pb.ModuleQueryRequest(request=raw), timeout=TIMEOUT)
        return bytes(reply.answer)

    async def snapshot(self) -> list[pb.ModuleSnapshotChunk]:
        return [c async for c in self.stub.Snapshot(pb.ModuleSnapshotRequest(), timeout=TIMEOUT)]

    async def restore(self, chunks: list[pb.ModuleSnapshotChunk]) -> None:
        stream = iter([pb.RestoreChunk(data=c.data, index=c.index) for c in chunks])
        await self.stub.Restore(stream, timeout=TIMEOUT)
        self.index = chunks[0].index


@contextlib.asynccontextmanager
async def serving(module: Module) -> AsyncIterator[Client]:
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_module(module, "127.0.0.1:0", ready=bound.set_result))
    waiting: set[asyncio.Future[Any]] = {task, bound}
    await asyncio.wait(waiting, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert bound.done(), "serve_module did not report ready"
    try:
        async with grpc.aio.insecure_channel(bound.result()) as channel:
            yield Client(pb_grpc.ModuleStub(channel))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- kv ----------------------------------------------------------------------------


def test_kv_put_cas_and_get_speak_exactly_the_documented_format() -> None:
    async def scenario() -> None:
        async with serving(KvModule()) as kv:
            assert await kv.apply({"op": "put", "key": "k", "value": "v1"}) == [b'{"ok":true}']
            assert await kv.apply(
                {"op": "cas", "key": "k", "expect": "v1", "value": "v2"},
                {"op": "cas", "key": "k", "expect": "v1", "value": "v3"},
                {"op": "cas", "key": "new", "expect": "x", "value": "y"},
                {"op": "cas", "key": "new", "expect": None, "value": "born"},
            ) == [
                b'{"ok":true,"value":"v2"}',
                b'{"ok":false,"value":"v2"}',
                b'{"ok":false,"value":null}',
                b'{"ok":true,"value":"born"}',
            ]
            assert await kv.query({"op": "get", "key": "k"}) == b'{"value":"v2"}'
            assert await kv.query({"op": "get", "key": "new"}) == b'{"value":"born"}'
            assert await kv.query({"op": "get", "key": "absent"}) == b'{"value":null}'
            unicode = {"op": "put", "key": "clé", "value": "värde ✓"}
            assert await kv.apply(unicode) == [b'{"ok":true}']
            answer = await kv.query({"op": "get", "key": "clé"})
            assert json.loads(answer.decode("utf-8")) == {"value": "värde ✓"}

    asyncio.run(scenario())


@given(st.text(), st.one_of(st.none(), st.text()))
def test_kv_get_answers_are_the_canonical_json_of_the_value(key: str, value: str | None) -> None:
    module = KvModule()
    if value is not None:
        module.data[key] = value
    answer = module.query(json.dumps({"op": "get", "key": key}).encode())
    assert answer == _dump({"value": value})  # byte for byte, as every replica answers


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (b"put k v", "not a JSON object"),
        (b"\xff\xfe\x00", "not a JSON object"),
        (b'["put", "k", "v"]', "not a JSON object"),
        (
            b'{"op":"put","key":"k","value":"v"} x',
            "not a JSON object: unexpected content after document",
        ),
        (
            b'{"op":"put","key":"k","value":"v"}{}',
            "not a JSON object: unexpected content after document",
        ),
        (b"", "not a JSON object: Input is a zero-length, empty document"),
        # a lone surrogate is no text: it could be neither answered nor snapshotted
        (b'{"op":"put","key":"k","value":"\\ud800"}', "no low surrogate"),
        ({"op": "delete", "key": "k"}, "unknown op 'delete'"),
        ({"op": ["put"], "key": "k"}, "unknown op"),
        ({"key": "k", "value": "v"}, "unknown op None"),
        ({"op": "put", "key": "k"}, "missing fields ['value']"),
        ({"op": "put", "key": "k", "vale": "v"}, "unexpected fields ['vale']"),
        ({"op": "cas", "key": "k", "value": "v"}, "missing fields ['expect']"),
        ({"op": "put", "key": "k", "value": 5}, "'value' must be a string, not 5"),
        ({"op": "put", "key": None, "value": "v"}, "'key' must be a string, not null"),
        ({"op": "cas", "key": "k", "expect": 1, "value": "v"}, "'expect' must be a string or null"),
    ],
)
def test_kv_bad_commands_are_error_results_and_change_nothing(command: Any, problem: str) -> None:
    async def scenario() -> None:
        async with serving(KvModule()) as kv:
            await kv.apply({"op": "put", "key": "k", "value": "before"})
            bad, after = await kv.apply(command, {"op": "put", "key": "other", "value": "x"})
            error = json.loads(bad)
            assert list(error) == ["error"]
            assert problem in error["error"]
            assert after == b'{"ok":true}', "the rest of the batch still applies"
            assert await kv.query({"op": "get", "key": "k"}) == b'{"value":"before"}'

    asyncio.run(scenario())


def test_kv_reads_json_as_json_loads_does_whitespace_and_all() -> None:
    module = KvModule()
    assert module.apply(b' \n{ "op" : "put", "key": "k", "value": "v" }\t', 1) == b'{"ok":true}'
    assert module.query(b'  {"op":"get","key":"k"}\r\n') == b'{"value":"v"}'


def test_kv_bad_queries_are_invalid_argument() -> None:
    async def scenario() -> None:
        async with serving(KvModule()) as kv:
            for request, problem in [
                (b"get k", "not a JSON object"),
                ({"op": "put", "key": "k", "value": "v"}, "unknown op 'put'"),
                ({"op": "get"}, "missing fields ['key']"),
                ({"op": "get", "key": 3}, "'key' must be a string"),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await kv.query(request)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert problem in refused.value.details()

    asyncio.run(scenario())


def test_kv_snapshot_is_deterministic_and_restores_into_a_fresh_server() -> None:
    puts = [{"op": "put", "key": f"key{i}", "value": f"value{i}"} for i in range(50)]

    async def scenario() -> None:
        async with serving(KvModule()) as forward, serving(KvModule()) as backward:
            await forward.apply(*puts)
            await backward.apply(*reversed(puts))
            snapshot = await forward.snapshot()
            assert [c.data for c in snapshot] == [c.data for c in await backward.snapshot()]
            assert json.loads(b"".join(c.data for c in snapshot))["key7"] == "value7"
        async with serving(KvModule()) as fresh:
            await fresh.restore(snapshot)
            assert await fresh.query({"op": "get", "key": "key42"}) == b'{"value":"value42"}'
            cas = {"op": "cas", "key": "key42", "expect": "value42", "value": "z"}
            assert await fresh.apply(cas) == [b'{"ok":true,"value":"z"}']

    asyncio.run(scenario())


# --- wordtracker ---------------------------------------------------------------------


def add(word: Any) -> dict[str, Any]:
    return {"op": "add", "word": word}


def test_wordtracker_counts_words_and_ranks_the_top_ones() -> None:
    async def scenario() -> None:
        async with serving(WordTrackerModule()) as words:
            text = "the cat saw the dog and the cat ran"
            results = await words.apply(*(add(w) for w in text.split()))
            assert [json.loads(r)["count"] for r in results] == [1, 1, 1, 2, 1, 1, 3, 2, 1]
            assert await words.query({"op": "count", "word": "the"}) == b'{"count":3}'
            assert await words.query({"op": "count", "word": "bird"}) == b'{"count":0}'
            top = json.loads(await words.query({"op": "top", "n": 3}))
            assert top == {"top": [["the", 3], ["cat", 2], ["and", 1]]}  # ties alphabetical

            bad = await words.apply(add("two words"), add(""), add(7), {"op": "remove"}, b"hi")
            assert all("error" in json.loads(r) for r in bad)
            for query in ({"op": "top", "n": 0}, {"op": "top", "n": True}, {"op": "what"}):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await words.query(query)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(scenario())


def test_wordtracker_snapshot_restores_the_counts() -> None:
    async def scenario() -> None:
        async with serving(WordTrackerModule()) as words:
            await words.apply(add("raft"), add("raft"), add("log"))
            snapshot = await words.snapshot()
        async with serving(WordTrackerModule()) as fresh:
            await fresh.restore(snapshot)
            assert await fresh.apply(add("raft")) == [b'{"count":3}']
            top = await fresh.query({"op": "top", "n": 5})
            assert json.loads(top) == {"top": [["raft", 3], ["log", 1]]}

    asyncio.run(scenario())


# --- the runner ------------------------------------------------------------------------


def start_example(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tinyraft.examples", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def first_line(stream: Any, deadline: float) -> str:
    """The stream's first line, or fail after `deadline` seconds (readline alone could
    block forever)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=deadline)
    except queue.Empty:
        pytest.fail(f"no line within {deadline}s")


def test_the_example_serves_prints_its_address_and_stops_on_sigterm() -> None:
    proc = start_example("kv", "--listen", "127.0.0.1:0")
    try:
        line = first_line(proc.stdout, deadline=30)
        prefix = "module kv listening on 127.0.0.1:"
        assert line.startswith(prefix), line
        address = line.strip().removeprefix("module kv listening on ")
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ModuleStub(channel)
            put = pb.ModuleEntry(index=1, command=b'{"op":"put","key":"a","value":"b"}')
            request = pb.ApplyBatchRequest(after_index=0, entries=[put], last_index=1)
            assert stub.Apply(request, timeout=TIMEOUT).results[0].result == b'{"ok":true}'
            assert stub.Info(pb.InfoRequest(), timeout=TIMEOUT).applied_index == 1
        proc.terminate()
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_the_example_exits_2_naming_listen_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_example("wordtracker", "--listen", f"127.0.0.1:{port}")
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 2
    assert out == ""
    message = err.strip().splitlines()[-1]
    assert message.startswith("--listen: cannot listen on 127.0.0.1:") and "in use" in message


def test_main_example_exits_2_for_a_malformed_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_example("kv", "localhost") == 2
    assert "--listen" in capsys.readouterr().err
    assert main_example("nope", "127.0.0.1:0") == 2
    assert "kv, wordtracker" in capsys.readouterr().err
