"""`tinyraft sim`: many seeds in parallel, one JSON summary, a replay line per failure."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TextIO

from tinyraft.sim.cluster import SimResult, run_seed


def _run(args: tuple[int, int]) -> SimResult:
    seed, members = args
    try:
        return run_seed(seed, members)
    except Exception as err:  # a crash of the core is a failed seed, not a crashed run
        return SimResult(seed, members, False, 0, False, f"exception: {err!r}")


def run_many(
    seeds: list[int], member_counts: list[int], jobs: int, out: TextIO = sys.stdout
) -> dict[str, object]:
    """Seed i runs with member_counts[i % len(member_counts)] members."""
    started = time.perf_counter()
    work = [(s, member_counts[i % len(member_counts)]) for i, s in enumerate(seeds)]
    if jobs > 1 and len(work) > 1:
        # forkserver, not fork: the caller may hold threads (gRPC) that fork would copy.
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            results = list(pool.map(_run, work, chunksize=4))
    else:
        results = [_run(w) for w in work]
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"FAIL seed {r.seed} ({r.members} members): {r.violation}", file=out)
        print(f"  replay: {r.replay_command()}", file=out)
    return {
        "seeds": len(results),
        "members": sorted(set(member_counts)),
        "violations": len(failed),
        "linearizable": sum(r.linearizable for r in results),
        "operations": sum(r.operations for r in results),
        "elapsed_s": round(time.perf_counter() - started, 2),
        "failed_seeds": [r.seed for r in failed],
    }


def main(
    seeds: int, first_seed: int, members: list[int], jobs: int | None, as_json: bool, verbose: bool
) -> int:
    if seeds == 1 and verbose:
        result = run_seed(first_seed, members[0], verbose=True)
        print(
            json.dumps(
                {
                    "seed": result.seed,
                    "ok": result.ok,
                    "violation": result.violation,
                    "operations": result.operations,
                    "stats": result.stats,
                }
            )
        )
        return 0 if result.ok else 1
    summary = run_many(
        list(range(first_seed, first_seed + seeds)), members, jobs or os.cpu_count() or 1
    )
    if as_json:
        print(json.dumps(summary))
    else:
        print(
            f"{summary['seeds']} seeds, {summary['violations']} violations, "
            f"{summary['linearizable']} histories linearizable, "
            f"{summary['operations']} operations in {summary['elapsed_s']}s"
        )
    return 1 if summary["violations"] else 0
