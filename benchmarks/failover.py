"""Failover under load: SIGKILL the leader while a writer runs; how long until writes
succeed again? Prints every trial, then one JSON line with the distribution.

    python benchmarks/failover.py --trials 20

The clock starts at the kill and stops when the first write *sent* after the kill is
acknowledged (an answer already in flight at the kill does not count). The Caller runs
with its defaults: what a client sees, back-off and all."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tinyraft.caller import BlockingCaller
from tinyraft.local import LocalCluster

ELECTION_MS = 500  # the sidecar's default RAFT_ELECTION_MS


def trial(cluster: LocalCluster, caller: BlockingCaller) -> float:
    leader = cluster.leader()
    assert leader is not None
    acked: list[tuple[float, float]] = []  # (sent, acknowledged)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            sent = time.monotonic()
            try:
                caller.apply(f'{{"op":"put","key":"f","value":"{i}"}}'.encode())
                acked.append((sent, time.monotonic()))
            except Exception:
                pass
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    cluster.wait_for(lambda: len(acked) >= 20, 10, "writes before the kill")
    killed_at = time.monotonic()
    cluster.kill(leader)
    resumed = cluster.wait_for(
        lambda: next((done for sent, done in acked if sent > killed_at), None),
        30,
        "a write sent after the kill to succeed",
    )
    stop.set()
    thread.join(30)
    cluster.restart(leader)
    cluster.wait_for(
        lambda: (s := cluster.try_status(leader)) is not None and s.leader_id != "", 30, "rejoin"
    )
    return float(resumed) - killed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp)) as cluster:
        cluster.form(3)
        with BlockingCaller(cluster.addresses()) as caller:
            gaps = []
            for n in range(args.trials):
                gap = trial(cluster, caller)
                gaps.append(gap)
                print(json.dumps({"trial": n, "resumed_after_s": round(gap, 3)}), flush=True)
    gaps.sort()
    p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]
    print(
        json.dumps(
            {
                "trials": len(gaps),
                "min_s": round(gaps[0], 3),
                "p50_s": round(statistics.median(gaps), 3),
                "p99_s": round(p99, 3),
                "max_s": round(gaps[-1], 3),
                "target_p99_s": 2 * ELECTION_MS / 1000,
            }
        )
    )


if __name__ == "__main__":
    main()
