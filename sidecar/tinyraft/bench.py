"""`tinyraft bench`: a local cluster driven through real Callers; one JSON line of results.

The cluster is the same machinery as `tinyraft local` (real sidecar and kv Module
processes, real fsync unless --no-fsync). Load comes from asyncio Callers in this
process: `concurrency` workers, each with one command or query in flight at a time."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from tinyraft.caller import Caller, ConsistencyName
from tinyraft.local import LocalCluster

WORKERS_PER_CALLER = 16  # concurrent calls share a Caller, whose requests batch them


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
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Tally:
    writes: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    errors: int = 0


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _put(key: int, size: int) -> bytes:
    prefix = f'{{"op":"put","key":"k{key}","value":"'
    pad = max(size - len(prefix) - 2, 1)
    return (prefix + "x" * pad + '"}').encode()


async def drive(addresses: list[str], cfg: BenchConfig, show_progress: bool) -> dict[str, object]:
    callers = [
        Caller(addresses, timeout=10.0)
        for _ in range(max(1, cfg.concurrency // WORKERS_PER_CALLER))
    ]
    tally = _Tally()
    payloads = [_put(k, cfg.size) for k in range(cfg.keys)]
    queries = [json.dumps({"op": "get", "key": f"k{k}"}).encode() for k in range(cfg.keys)]
    start = time.monotonic()
    measure_from = start + cfg.warmup
    end = measure_from + cfg.seconds

    async def worker(n: int) -> None:
        caller = callers[n % len(callers)]
        local = random.Random(n)
        while (now := time.monotonic()) < end:
            k = local.randrange(cfg.keys)
            read = local.random() < cfg.reads
            try:
                if read:
                    await caller.query(queries[k], consistency=cfg.consistency)
                else:
                    await caller.apply(payloads[k])
            except Exception:
                tally.errors += 1
                continue
            done = time.monotonic()
            if now >= measure_from:
                (tally.reads if read else tally.writes).append(done - now)

    tasks = [asyncio.create_task(worker(n)) for n in range(cfg.concurrency)]
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
    writes, reads = sorted(tally.writes), sorted(tally.reads)
    latencies = sorted(writes + reads) if cfg.reads else writes
    result: dict[str, object] = {
        "members": cfg.members,
        "concurrency": cfg.concurrency,
        "size_bytes": cfg.size,
        "seconds": cfg.seconds,
        "commits_per_s": round(len(writes) / cfg.seconds, 1),
        "p50_ms": round(_percentile(latencies, 0.5) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
        "p999_ms": round(_percentile(latencies, 0.999) * 1000, 3),
        "errors": tally.errors,
        "durable": cfg.fsync,
    }
    if cfg.reads:
        result["reads_per_s"] = round(len(reads) / cfg.seconds, 1)
        result["consistency"] = cfg.consistency
        result["write_p99_ms"] = round(_percentile(writes, 0.99) * 1000, 3)
        result["read_p99_ms"] = round(_percentile(reads, 0.99) * 1000, 3)
    return result


def run(
    cfg: BenchConfig, base: Path | None = None, show_progress: bool = False
) -> dict[str, object]:
    env = {"RAFT_FSYNC": "true" if cfg.fsync else "false", "LOG_LEVEL": "warning", **cfg.env}
    with (
        tempfile.TemporaryDirectory(prefix="tinyraft-bench-") as tmp,
        LocalCluster(base or Path(tmp), env=env) as cluster,
    ):
        cluster.form(cfg.members)
        leader = cluster.leader()
        assert leader is not None
        # The leader first: callers start where writes are served.
        addresses = [cluster.members[leader].address] + [
            m.address for m in cluster.members.values() if m.id != leader
        ]
        return asyncio.run(drive(addresses, cfg, show_progress))


def main(cfg: BenchConfig, as_json: bool) -> int:
    result = run(cfg, show_progress=sys.stderr.isatty() and not os.environ.get("CI"))
    if not as_json:
        for key, value in result.items():
            print(f"{key:>14}: {value}")
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1
