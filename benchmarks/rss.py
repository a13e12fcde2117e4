"""Is the sidecar's memory flat under steady load? RSS over minutes at half the peak.

    python benchmarks/rss.py --minutes 10

Starts the cluster `tinyraft bench` starts (tinyraft.bench.bench_cluster: 3 members,
fsync on) with a small automatic snapshot threshold (RAFT_SNAPSHOT_ENTRIES, 5000 log
entries by default) so that the log is compacted many times during the run. Measures
the peak throughput for --peak-seconds (--concurrency calls in flight, closed loop), then drives
the cluster open loop at --fraction of that rate (bench's --rate pacing) for --minutes,
sampling every sidecar's VmRSS (/proc/PID/status) every --interval seconds.

Prints one JSON object: per member the average RSS over the first and the last minute
of the paced run, the maximum, their ratio and whether it is within 20%; the commands
and log entries committed; the snapshots each member took (from its metrics); and the
paced run's latency (the "p99 at half of peak throughput")."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tinyraft.bench import BenchConfig, bench_cluster, drive
from tinyraft.local import LocalCluster

FLAT = 0.20  # the target: flat within ±20%


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def snapshots_taken(cluster: LocalCluster) -> dict[str, int | None]:
    """Each member's tinyraft_snapshot_save_total, from its metrics endpoint."""
    out: dict[str, int | None] = {}
    for m in cluster.members.values():
        try:
            url = f"http://127.0.0.1:{m.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            out[m.id] = None
            continue
        out[m.id] = next(
            (int(float(line.split()[-1])) for line in text.splitlines()
             if line.startswith("tinyraft_snapshot_save_total ")),
            None,
        )  # fmt: skip
    return out


def summarize(
    samples: list[tuple[float, float]], duration: float, window: float
) -> dict[str, object]:
    """samples: (seconds since the paced run started, MiB)."""
    first = [v for t, v in samples if t < window]
    last = [v for t, v in samples if t >= duration - window]
    if not first or not last:
        return {"samples": len(samples)}
    a, b = statistics.fmean(first), statistics.fmean(last)
    ratio = b / a
    return {
        "first_minute_avg_mib": round(a, 1),
        "last_minute_avg_mib": round(b, 1),
        "max_mib": round(max(v for _, v in samples), 1),
        "min_mib": round(min(v for _, v in samples), 1),
        "ratio_last_first": round(ratio, 3),
        "flat_within_20pct": abs(ratio - 1) <= FLAT,
        "samples": len(samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="paced run (default 10)")
    parser.add_argument("--peak-seconds", type=float, default=10.0, help="peak measurement")
    parser.add_argument("--fraction", type=float, default=0.5, help="of the peak (default 0.5)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4096,
        help="calls in flight (peak: one Caller, many calls)",
    )
    parser.add_argument(
        "--snapshot-entries", type=int, default=5000, help="RAFT_SNAPSHOT_ENTRIES (default 5000)"
    )
    args = parser.parse_args()
    duration = args.minutes * 60
    window = min(60.0, duration / 3)  # "first minute", "last minute" (shorter in short runs)
    env = {"RAFT_SNAPSHOT_ENTRIES": str(args.snapshot_entries)}
    base = BenchConfig(concurrency=args.concurrency, env=env)

    with bench_cluster(base) as (cluster, addresses):
        leader = cluster.leader()
        peak_cfg = BenchConfig(concurrency=args.concurrency, seconds=args.peak_seconds, env=env)
        peak = asyncio.run(drive(addresses, peak_cfg, False))
        peak_rate = float(str(peak["commits_per_s"]))
        if peak_rate <= 0:
            print(f"rss: no throughput to pace at: {json.dumps(peak)}", file=sys.stderr)
            return 1
        rate = peak_rate * args.fraction
        print(json.dumps({"peak": peak, "paced_rate": round(rate, 1)}), file=sys.stderr)

        sidecars = {m.id: m.sidecar.pid for m in cluster.members.values() if m.sidecar}
        samples: dict[str, list[tuple[float, float]]] = {m: [] for m in sidecars}
        snapshots_before = snapshots_taken(cluster)
        entries_before = cluster.status(leader).commit_index if leader else 0
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while True:
                at = time.monotonic() - started
                for member, pid in sidecars.items():
                    if (value := rss_mib(pid)) is not None:
                        samples[member].append((at, value))
                if stop.wait(args.interval):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        paced_cfg = BenchConfig(
            concurrency=args.concurrency, seconds=duration, warmup=0.0, rate=rate, env=env
        )
        paced = asyncio.run(drive(addresses, paced_cfg, False))
        stop.set()
        sampler.join()
        samples_end = time.monotonic() - started
        snapshots_after = snapshots_taken(cluster)
        leader_now = cluster.leader()
        entries = cluster.status(leader_now).commit_index - entries_before if leader_now else None
        final = {m: cluster.try_status(m) for m in cluster.members}

    members = {
        member: summarize(values, min(duration, samples_end), window)
        for member, values in samples.items()
    }
    result = {
        "minutes": args.minutes,
        "interval_s": args.interval,
        "window_s": window,
        "snapshot_entries": args.snapshot_entries,
        "peak_commits_per_s": peak_rate,
        "target_rate": round(rate, 1),
        "commands_committed": round(float(str(paced["commits_per_s"])) * duration),
        "log_entries_committed": entries,
        "snapshots_taken": {
            m: (after - before if after is not None and before is not None else None)
            for m, before, after in (
                (m, snapshots_before.get(m), snapshots_after.get(m)) for m in cluster.members
            )
        },
        "snapshot_index": {m: (s.snapshot_index if s else None) for m, s in final.items()},
        "leader": {"start": leader, "end": leader_now},
        "paced": {
            k: paced[k]
            for k in ("commits_per_s", "p50_ms", "p99_ms", "p999_ms", "errors", "unsent")
        },
        "sidecar_rss": members,
        "flat_within_20pct": all(bool(m.get("flat_within_20pct")) for m in members.values()),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
