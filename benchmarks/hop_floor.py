"""The floor under one sequential write, measured in the same run as the write.

    python benchmarks/hop_floor.py --rounds 3 --seconds 5

A sequential write crosses three gRPC round trips in series (Caller and leader, leader
and follower, leader and Module) and one fsync (the follower's; the leader's runs
beside it). Each round times, one after another on this machine:
- one message's round trip on a gRPC bidi stream between two processes, on the event
  loop the sidecar runs (uvloop), the form every hop of a write takes;
- the same round trip over a plain TCP socket, which says what gRPC itself costs;
- one small append and fdatasync in the directory the benchmark's cluster uses;
- then `tinyraft bench --concurrency 1`.
"floor" is three gRPC round trips and one fsync: what a write costs before any Raft,
Module or Caller work. Prints every round, then one JSON line with the medians."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import grpc

from tinyraft import event_loop
from tinyraft.bench import BenchConfig, percentile
from tinyraft.bench import run as bench_run

ECHO_METHOD = "/hop_floor.Echo/Stream"
MESSAGE = b"x" * 128  # a 128-byte command
HOPS = 3  # gRPC round trips on a sequential write's path


async def _serve() -> None:
    """The echo side: a gRPC bidi stream and a length-prefixed TCP socket, each sending
    back what arrives. Prints its two ports, then runs until stdin closes."""

    async def echo_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    async def echo_socket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(4)
                writer.write(header + await reader.readexactly(int.from_bytes(header)))
        except asyncio.IncompleteReadError:
            writer.close()

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(echo_stream)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("hop_floor.Echo", {"Stream": handler})]
    )
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tcp = await asyncio.start_server(echo_socket, "127.0.0.1", 0)
    tcp_port = tcp.sockets[0].getsockname()[1]
    print(grpc_port, tcp_port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    tcp.close()
    await server.stop(None)


def _ms(times: list[float], q: float) -> float:
    return round(percentile(sorted(times), q) * 1e3, 3)


async def _timed(
    name: str, seconds: float, round_trip: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    """p50 and p99 of `round_trip` repeated for `seconds`, and this process's CPU for each."""
    for _ in range(100):  # warm: connections, caches
        await round_trip()
    times: list[float] = []
    cpu, end = time.process_time(), time.monotonic() + seconds
    while (start := time.monotonic()) < end:
        await round_trip()
        times.append(time.monotonic() - start)
    cpu = time.process_time() - cpu
    return {
        f"{name}_p50_ms": _ms(times, 0.5),
        f"{name}_p99_ms": _ms(times, 0.99),
        f"{name}_client_cpu_ms": round(cpu / len(times) * 1e3, 3),
    }


async def _round_trips(grpc_port: int, tcp_port: int, seconds: float) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call = channel.stream_stream(ECHO_METHOD)()

        async def over_grpc() -> None:
            await call.write(MESSAGE)
            await call.read()

        grpc_rt = await _timed("grpc_round_trip", seconds, over_grpc)
        await call.done_writing()
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
    frame = len(MESSAGE).to_bytes(4) + MESSAGE

    async def over_tcp() -> None:
        writer.write(frame)
        await reader.readexactly(len(frame))

    tcp_rt = await _timed("tcp_round_trip", seconds, over_tcp)
    writer.close()
    return grpc_rt | tcp_rt


def _fsync_p50_ms(seconds: float) -> float:
    """An append of one command and its fdatasync, as a follower's log write does."""
    times: list[float] = []
    # The default temporary directory: the one `tinyraft bench` puts its cluster in.
    with tempfile.NamedTemporaryFile() as f:
        fd, end = f.fileno(), time.monotonic() + seconds
        while (start := time.monotonic()) < end:
            os.write(fd, MESSAGE)
            os.fdatasync(fd)
            times.append(time.monotonic() - start)
    return _ms(times, 0.5)


def one_round(seconds: float) -> dict[str, float]:
    echo = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert echo.stdout is not None and echo.stdin is not None
        grpc_port, tcp_port = map(int, echo.stdout.readline().split())  # EOF: it failed
        hops = event_loop.run(_round_trips(grpc_port, tcp_port, seconds))
        echo.stdin.close()
        echo.wait(timeout=10)
    finally:
        echo.kill()
    fsync = _fsync_p50_ms(seconds)
    write = bench_run(BenchConfig(concurrency=1, seconds=seconds))
    return {
        **hops,
        "fsync_p50_ms": fsync,
        "floor_p50_ms": round(HOPS * hops["grpc_round_trip_p50_ms"] + fsync, 3),
        **{f"sequential_{k}": cast(float, write[k]) for k in ("commits_per_s", "p50_ms", "p99_ms")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or not args.seconds > 0:
        parser.error("--rounds must be at least 1 and --seconds more than 0")
    if args.serve:
        event_loop.run(_serve())
        return
    rounds = []
    for n in range(args.rounds):
        rounds.append(one_round(args.seconds))
        print(json.dumps({"round": n, **rounds[-1]}), flush=True)

    medians = {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
    print(json.dumps({**medians, "target_p50_ms": 2.0, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
