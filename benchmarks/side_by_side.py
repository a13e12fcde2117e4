"""tinyraft against PySyncObj on this machine, in the same run, alternating.

    python benchmarks/side_by_side.py --rounds 3 --seconds 10

Each round runs `tinyraft bench` (3 members, 128-byte commands, fsync on, through real
Callers and the kv Module) and then PySyncObj (3 members, commands issued inside the
leader process, journal on). Prints every run, then one JSON summary line with the
medians and the ratio."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _last_json(cmd: list[str]) -> dict[str, object]:
    # Flush what the previous run left in the page cache first: PySyncObj's journal is
    # written but never synced, and the kernel's writeback of it would land in the
    # next run's fsyncs.
    os.sync()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    # peak throughput: one Caller batching many concurrent calls (tinyraft bench --callers)
    parser.add_argument("--concurrency", type=int, default=4096)
    args = parser.parse_args()
    ours, theirs = [], []
    for n in range(args.rounds):
        tiny = _last_json(
            [sys.executable, "-m", "tinyraft.cli", "bench", "--json", "--seconds", str(args.seconds),
             "--concurrency", str(args.concurrency), "--size", "128"]
        )  # fmt: skip
        peer = _last_json(
            [sys.executable, str(HERE / "pysyncobj_peer.py"), "--seconds", str(args.seconds)]
        )
        print(json.dumps({"round": n, "tinyraft": tiny, "pysyncobj": peer}), flush=True)
        ours.append(float(tiny["commits_per_s"]))  # type: ignore[arg-type]
        theirs.append(float(peer["commits_per_s"]))  # type: ignore[arg-type]
    a, b = statistics.median(ours), statistics.median(theirs)
    print(
        json.dumps(
            {
                "tinyraft_commits_per_s": a,
                "pysyncobj_commits_per_s": b,
                "ratio": round(a / b, 3) if b else None,
                "target_ratio": 3.0,
                "rounds": args.rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
