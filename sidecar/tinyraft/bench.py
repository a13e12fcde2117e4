"""`tinyraft bench`: a local cluster driven through real Callers; one JSON line of results.

The cluster is the same machinery as `tinyraft local` (real sidecar and kv Module
processes, real fsync unless --no-fsync). Load comes from asyncio Callers in this
process: `concurrency` workers, each with one command or query in flight at a time.

Closed loop by default: each worker sends its next call as soon as the last returns.
With `rate` (--rate), open loop: calls are scheduled at `rate` per second across all
workers, whatever the cluster does, and each latency is measured from the call's
scheduled send time, so time spent queued behind a slow call counts (no coordinated
omission). `concurrency` then caps the calls in flight; calls the workers could not
send by the end of the run plus a grace period count in the percentiles as at least
as late as that ("unsent")."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from tinyraft import event_loop
from tinyraft.caller import Caller, ConsistencyName
from tinyraft.local import LocalCluster

PACE_TICK_S = 0.001  # open loop: the pacer wakes at most this often


@dataclass
class BenchConfig:
    members: int = 3
    concurrency: int = 64
    size: int = 128
    seconds: float = 10.0
    reads: float = 0.0  # fraction of operations that are queries
    consistency: ConsistencyName = "linearizable"
    fsync: bool = True
    keys: int = 1000
    warmup: float = 1.0
    rate: float | None = None  # open loop: commands/s across all workers; None: closed loop
    # Callers the workers share (round-robin). One is an application with many
    # concurrent requests: its Caller batches them. More model more client processes.
    callers: int = 1
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Tally:
    writes: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    errors: int = 0


def percentile(sorted_values: list[float], q: float) -> float:
    """The value at quantile q (0..1) of an ascending list; 0.0 for an empty one."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _put(key: int, size: int) -> bytes:
    prefix = f'{{"op":"put","key":"k{key}","value":"'
    pad = max(size - len(prefix) - 2, 1)
    return (prefix + "x" * pad + '"}').encode()


async def drive(addresses: list[str], cfg: BenchConfig, show_progress: bool) -> dict[str, object]:
    callers = [Caller(addresses, timeout=10.0) for _ in range(min(cfg.callers, cfg.concurrency))]
    tally = _Tally()
    payloads = [_put(k, cfg.size) for k in range(cfg.keys)]
    queries = [json.dumps({"op": "get", "key": f"k{k}"}).encode() for k in range(cfg.keys)]
    if cfg.reads:  # reads find values, as they would in use, not answers of "absent"
        await asyncio.gather(*(callers[0].apply(p) for p in payloads))
    start = time.monotonic()
    measure_from = start + cfg.warmup
    end = measure_from + cfg.seconds
    give_up = end + max(2.0, cfg.seconds / 2)  # open loop: calls not sent by then are unsent
    abandoned: list[float] = []
    # Keys and read-or-write drawn up front, shared by the workers: a draw per call
    # cost the benchmark's own process (whose CPU the cluster shares) ~5% of its time.
    rng = random.Random(0)
    draws = itertools.cycle(
        [(rng.randrange(cfg.keys), rng.random() < cfg.reads) for _ in range(1 << 16)]
    )
    # Open loop: one pacer releases calls as they fall due, whatever is due at each wake
    # at once, waking at most once per PACE_TICK_S; the workers take them in order. A
    # timer (or a wake) per call cost the benchmark itself up to a quarter of a core,
    # CPU the cluster's processes share. Latency runs from each call's due time, so a
    # call released up to a tick late is charged for it.
    # Released due times no worker has taken yet, and the workers idle for one: a deque
    # and a future per wait, where asyncio.Queue's get and put took a fifth of this
    # process's CPU at 33,000 calls/s.
    released: deque[float | None] = deque()
    idle: deque[asyncio.Future[float | None]] = deque()

    def release(due: float | None) -> None:
        while idle:
            waiter = idle.popleft()
            if not waiter.done():  # done: its worker was cancelled
                waiter.set_result(due)
                return
        released.append(due)

    async def pace(rate: float) -> None:
        due, calls = start, itertools.count(1)  # call i is due at start + i / rate
        while due < end:
            now = time.monotonic()
            while due <= now and due < end:
                release(due)
                due = start + next(calls) / rate
            await asyncio.sleep(max(due - now, PACE_TICK_S))
        for _ in range(cfg.concurrency):
            release(None)

    async def next_due_time() -> float | None:
        """Open loop: when the worker's next call counts as sent; None when the run is
        over."""
        while True:
            if released:
                due = released.popleft()
            else:
                waiter: asyncio.Future[float | None] = asyncio.Future()
                idle.append(waiter)
                due = await waiter
            if due is None:
                return None
            if time.monotonic() < give_up:
                return due
            abandoned.append(due)

    async def worker(n: int) -> None:
        # Looked up once: the benchmark's own process shares the cores with the cluster.
        caller = callers[n % len(callers)]
        query, apply = caller.query, caller.apply
        closed, consistency, clock = cfg.rate is None, cfg.consistency, time.monotonic
        while True:
            if closed:  # closed loop: a call counts as sent now (no coroutine)
                if (now := clock()) >= end:
                    return
            elif (due := await next_due_time()) is None:
                return
            else:
                now = due
            k, read = next(draws)
            try:
                if read:
                    await query(queries[k], consistency)
                else:
                    await apply(payloads[k])
            except Exception:
                tally.errors += 1
                continue
            done = clock()
            if now >= measure_from:
                (tally.reads if read else tally.writes).append(done - now)

    tasks = [asyncio.create_task(worker(n)) for n in range(cfg.concurrency)]
    if cfg.rate is not None:
        tasks.append(asyncio.create_task(pace(cfg.rate)))
    if show_progress:
        with Progress(transient=True) as progress:
            bar = progress.add_task("benchmarking", total=cfg.warmup + cfg.seconds)
            while not all(t.done() for t in tasks):
                progress.update(
                    bar, completed=min(time.monotonic() - start, cfg.warmup + cfg.seconds)
                )
                await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    for caller in callers:
        await caller.close()
    unsent = [give_up - due for due in abandoned if due >= measure_from]  # lower bounds
    writes, reads = sorted(tally.writes + unsent), sorted(tally.reads)
    latencies = sorted(writes + reads) if cfg.reads else writes
    result: dict[str, object] = {
        "members": cfg.members,
        "concurrency": cfg.concurrency,
        "callers": min(cfg.callers, cfg.concurrency),
        "target_rate": cfg.rate,
        "size_bytes": cfg.size,
        "seconds": cfg.seconds,
        "commits_per_s": round(len(tally.writes) / cfg.seconds, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "p999_ms": round(percentile(latencies, 0.999) * 1000, 3),
        "errors": tally.errors,
        "durable": cfg.fsync,
    }
    if cfg.rate is not None:
        result["unsent"] = len(unsent)
    if cfg.reads:
        result["reads_per_s"] = round(len(reads) / cfg.seconds, 1)
        result["consistency"] = cfg.consistency
        result["write_p99_ms"] = round(percentile(writes, 0.99) * 1000, 3)
        result["read_p99_ms"] = round(percentile(reads, 0.99) * 1000, 3)
    return result


@contextmanager
def bench_cluster(
    cfg: BenchConfig, base: Path | None = None
) -> Iterator[tuple[LocalCluster, list[str]]]:
    """The cluster `tinyraft bench` drives, formed; yields it and the addresses to call,
    the leader's first (callers start where writes are served). Used by benchmarks/."""
    env = {"RAFT_FSYNC": "true" if cfg.fsync else "false", "LOG_LEVEL": "warning", **cfg.env}
    with (
        tempfile.TemporaryDirectory(prefix="tinyraft-bench-") as tmp,
        LocalCluster(base or Path(tmp), env=env) as cluster,
    ):
        cluster.form(cfg.members)
        leader = cluster.leader()
        assert leader is not None
        addresses = [cluster.members[leader].address] + [
            m.address for m in cluster.members.values() if m.id != leader
        ]
        yield cluster, addresses


def run(
    cfg: BenchConfig, base: Path | None = None, show_progress: bool = False
) -> dict[str, object]:
    with bench_cluster(cfg, base) as (_, addresses):
        return event_loop.run(drive(addresses, cfg, show_progress))


def main(cfg: BenchConfig, as_json: bool) -> int:
    result = run(cfg, show_progress=sys.stderr.isatty() and not os.environ.get("CI"))
    if not as_json:
        for key, value in result.items():
            print(f"{key:>14}: {value}")
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1
