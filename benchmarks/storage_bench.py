"""Micro-benchmark of the log store against the raw disk, measured in the same run.

For batches of 1, 16 and 256 entries of 128 bytes: SqliteLogStore.save(hard_state,
batch) with sync (one transaction, one fsync each), against the raw rate of the same
disk: a plain file in the same directory, os.write(128 * batch bytes) + os.fdatasync.
Raw is measured two ways: appending to a new file (the literal baseline: the file
grows, so each fdatasync also commits its size) and overwriting a preallocated file
(what a log that preallocates its segments, like etcd's WAL, pays). SQLite's WAL is
overwritten in place after each checkpoint, so the second is the stricter bound.

Rounds alternate raw and store runs so that both see the same disk weather; rates
and ratios are medians over rounds. `commit_share` is the part of the store's time
spent in SQLite's COMMIT (WAL write + fsync, and checkpoints), the rest is encoding
and inserting. The last line of output is one JSON object.

    python benchmarks/storage_bench.py [--dir DIR] [--seconds 0.4] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from statistics import median

from tinyraft.core.types import Entry, EntryKind, HardState
from tinyraft.storage import SqliteLogStore

ENTRY_BYTES = 128
BATCHES = (1, 16, 256)
TARGET_RATIO = 0.5
_SLOTS = 256  # batches per preallocated raw file before it wraps around


def raw_rate(directory: Path, batch: int, seconds: float, preallocated: bool) -> float:
    """fdatasyncs per second of os.write(128 * batch bytes) + os.fdatasync."""
    path = directory / "raw.bin"
    buf = os.urandom(ENTRY_BYTES * batch)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if preallocated:  # written, not just fallocated: no extent conversion while timed
            os.write(fd, bytes(len(buf) * _SLOTS))
            os.fsync(fd)
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            if preallocated and count % _SLOTS == 0:
                os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, buf)
            os.fdatasync(fd)
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()


class StoreRun:
    """One store per batch size, kept across rounds so the log keeps growing."""

    def __init__(self, directory: Path, batch: int):
        self.batch = batch
        self.fsync_seconds = 0.0
        self.elapsed = 0.0
        self.store = SqliteLogStore.open(directory, on_fsync=self._on_fsync)
        self.next_index = 1
        self.data = os.urandom(ENTRY_BYTES)

    def _on_fsync(self, seconds: float) -> None:
        self.fsync_seconds += seconds

    def run(self, seconds: float) -> tuple[int, float]:
        """(saves, elapsed seconds). Entries are built before the clock starts: making
        them is the core's work, encoding and writing them is the store's."""
        saves = 0
        elapsed = 0.0
        while elapsed < seconds:
            work = []
            for _ in range(64):
                first = self.next_index
                self.next_index += self.batch
                entries = [
                    Entry(i, 1, EntryKind.NORMAL, self.data) for i in range(first, self.next_index)
                ]
                work.append((HardState(1, "m1", first - 1), entries))
            started = time.perf_counter()
            for hard_state, entries in work:
                self.store.save(hard_state, entries)
            elapsed += time.perf_counter() - started
            saves += len(work)
        self.elapsed += elapsed
        return saves, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    parser.add_argument("--seconds", type=float, default=0.4, help="per case and round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tinyraft-bench-", dir=args.dir))
    try:
        results = []
        for batch in BATCHES:
            store_dir = root / f"store-{batch}"
            store_dir.mkdir()
            run = StoreRun(store_dir, batch)
            rounds = []
            for _ in range(args.rounds):
                append = raw_rate(root, batch, args.seconds, preallocated=False)
                pre = raw_rate(root, batch, args.seconds, preallocated=True)
                saves, elapsed = run.run(args.seconds)
                rounds.append((saves / elapsed, append, pre))
            run.store.close()
            # Medians over rounds, ratios taken within a round: the disk is shared and
            # its rate drifts, so compare store and raw measured side by side.
            fsyncs = median(r[0] for r in rounds)
            result = {
                "batch": batch,
                "entries_per_s": round(fsyncs * batch),
                "fsyncs_per_s": round(fsyncs),
                "raw_append_fsyncs_per_s": round(median(r[1] for r in rounds)),
                "raw_preallocated_fsyncs_per_s": round(median(r[2] for r in rounds)),
                "ratio_to_raw_append": round(median(r[0] / r[1] for r in rounds), 3),
                "ratio_to_raw_preallocated": round(median(r[0] / r[2] for r in rounds), 3),
                "commit_share": round(run.fsync_seconds / run.elapsed, 3),
            }
            results.append(result)
            print(
                f"batch {batch:>3}: {result['entries_per_s']:>9} entries/s "
                f"{result['fsyncs_per_s']:>6} fsyncs/s | raw append "
                f"{result['raw_append_fsyncs_per_s']:>6} preallocated "
                f"{result['raw_preallocated_fsyncs_per_s']:>6} fsyncs/s | ratio "
                f"{result['ratio_to_raw_append']:.2f} / {result['ratio_to_raw_preallocated']:.2f}",
                flush=True,
            )
        big = results[-1]
        print(
            json.dumps(
                {
                    "benchmark": "storage",
                    "engine": f"sqlite {sqlite3.sqlite_version}",
                    "entry_bytes": ENTRY_BYTES,
                    "dir": str(root.parent),
                    "results": results,
                    "batch256_ratio_to_raw_append": big["ratio_to_raw_append"],
                    "batch256_ratio_to_raw_preallocated": big["ratio_to_raw_preallocated"],
                    "target_ratio": TARGET_RATIO,
                    "target_met": big["ratio_to_raw_append"] >= TARGET_RATIO,
                }
            )
        )
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
