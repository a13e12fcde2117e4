"""`tinyraft bench` runs end to end and reports what it promises (no speed is asserted:
figures belong in benchmarks, not tests)."""

import json
import subprocess
import sys

import pytest


def bench(*args: str) -> dict[str, object]:
    run = subprocess.run(
        [sys.executable, "-m", "tinyraft.cli", "bench", "--json", "--seconds", "1", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_bench_reports_writes_and_mixed_reads():
    result = bench("--members", "3", "--concurrency", "8", "--size", "128", "--reads", "0.5")
    for key in ("members", "concurrency", "size_bytes", "seconds", "commits_per_s", "p50_ms",
                "p99_ms", "p999_ms", "errors", "durable", "reads_per_s"):  # fmt: skip
        assert key in result, key
    assert result["members"] == 3 and result["size_bytes"] == 128 and result["durable"] is True
    assert result["errors"] == 0
    assert result["commits_per_s"] > 0 and result["reads_per_s"] > 0


def test_bench_open_loop_rate_through_several_callers():
    result = bench("--concurrency", "8", "--rate", "50", "--callers", "4")
    assert result["callers"] == 4
    assert result["target_rate"] == 50.0 and result["errors"] == 0
    # Open loop keeps the schedule: exactly rate x seconds calls fall in the window.
    assert result["commits_per_s"] == 50.0 and result["unsent"] == 0


@pytest.mark.parametrize(
    "flag, value",
    [("--reads", "2"), ("--rate", "0"), ("--rate", "-5"), ("--rate", "fast"), ("--callers", "0")],
)
def test_bench_rejects_bad_flags(flag, value):
    run = subprocess.run(
        [sys.executable, "-m", "tinyraft.cli", "bench", flag, value],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and flag in run.stderr
