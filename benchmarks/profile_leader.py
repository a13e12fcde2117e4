"""Where the leader's CPU goes at saturation: py-spy on the leader sidecar while the
`tinyraft bench` load runs.

    python benchmarks/profile_leader.py --seconds 15 --out leader-profile.txt

Starts the cluster `tinyraft bench` starts (tinyraft.bench.bench_cluster: 3 members,
fsync on), drives it with bench's Callers in this process (64 in flight by default),
and after a warm-up runs `py-spy record --gil --format raw` on the leader's sidecar
process. Prints the top functions by own time and by total time as markdown tables
(from the collapsed stacks py-spy writes, kept in --out), which thread held the GIL,
and the CPU time every process spent per command over the same window (from
/proc/PID/stat, so gRPC's C core and the kernel count too).

By default only samples in which a leader thread holds the GIL are kept: that is the
Python work, which one core at most can do at a time. With --all-samples, py-spy's
idle detection is trusted instead, and on this kind of machine it counts threads
blocked in epoll, in a queue's get() or in gRPC's poller as busy. A
function in C or Cython shows as its nearest Python caller (often `Handle._run`, the
event loop running a C task step) unless --native. Frames on at least 95% of their
thread's samples (thread start, the event loop's run loop) are left out of the total
table (--keep-plumbing keeps them). Needs ptrace (root, or CAP_SYS_PTRACE) and the
`bench` extra: pip install -e '.[bench]'."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tinyraft.bench import BenchConfig, bench_cluster, drive

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PLUMBING = 0.95  # a frame on this share of its thread's samples says nothing new
_NATIVE_ADDRESS = re.compile(r"^0x[0-9a-f]+ \((.*)\)$")  # a frame py-spy found no symbol for


@dataclass
class Profile:
    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    threads: Counter[str] = field(default_factory=Counter)
    by_thread: Counter[tuple[str, str]] = field(default_factory=Counter)  # (thread, frame)

    def plumbing(self) -> set[str]:
        """Frames on at least PLUMBING of the samples of every thread they appear in."""
        seen: dict[str, bool] = {}
        for (thread, frame), count in self.by_thread.items():
            ok = count >= PLUMBING * self.threads[thread]
            seen[frame] = seen.get(frame, True) and ok
        return {frame for frame, ok in seen.items() if ok}


def parse_collapsed(text: str) -> Profile:
    """py-spy's raw format: one `frame;frame;...;leaf COUNT` line per distinct stack, the
    root first; with --threads the root is `thread (TID): NAME`. A function counts once
    per stack toward its total, however deep it recurses. Native frames without a
    symbol (`0x7f... (lib.so)`) count as one `[lib.so]` frame per library."""
    profile = Profile()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "(all threads)"
        if frames[0].startswith("thread ("):
            thread = frames[0].partition(": ")[2] or frames[0]
            frames = frames[1:]
        frames = [_native_library(frame) for frame in frames]
        if not frames:
            continue
        profile.threads[thread] += count
        profile.samples += count
        profile.own[frames[-1]] += count
        for frame in set(frames):
            profile.total[frame] += count
            profile.by_thread[thread, frame] += count
    return profile


def _native_library(frame: str) -> str:
    match = _NATIVE_ADDRESS.match(frame)
    return f"[{Path(match.group(1)).name}]" if match else frame


def _cell(frame: str) -> str:
    return frame.replace("|", "\\|")


def top_table(profile: Profile, by: str, n: int, rate: int, skip: set[str]) -> str:
    counts = profile.own if by == "own" else profile.total
    other = profile.total if by == "own" else profile.own
    rows = [
        f"| # | function (file:first line) | {by} % | {by} s | {'total' if by == 'own' else 'own'} % |",
        "|---:|---|---:|---:|---:|",
    ]
    top = [(frame, count) for frame, count in counts.most_common() if frame not in skip][:n]
    for i, (frame, count) in enumerate(top, 1):
        rows.append(
            f"| {i} | `{_cell(frame)}` | {100 * count / profile.samples:.1f} "
            f"| {count / rate:.2f} | {100 * other[frame] / profile.samples:.1f} |"
        )
    return "\n".join(rows)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise SystemExit("profile_leader: py-spy not found; pip install -e '.[bench]'")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=15, help="profiled seconds (whole)")
    parser.add_argument("--concurrency", type=int, default=4096, help="calls in flight")
    parser.add_argument("--warmup", type=float, default=3.0, help="load before profiling")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    parser.add_argument(
        "--native", action="store_true", help="py-spy --native: C/C++ frames too (slower)"
    )
    parser.add_argument(
        "--all-samples",
        action="store_true",
        help="keep samples without the GIL too (trusting py-spy's idle detection)",
    )
    parser.add_argument(
        "--keep-plumbing", action="store_true", help="do not hide always-present frames"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("leader-profile.txt"), help="the raw collapsed stacks"
    )
    args = parser.parse_args()
    spy = py_spy()
    # The load outlasts the profile: warm-up, the py-spy window, and slack for py-spy's start.
    cfg = BenchConfig(concurrency=args.concurrency, warmup=args.warmup, seconds=args.seconds + 8)
    with bench_cluster(cfg) as (cluster, addresses):
        leader = cluster.leader()
        assert leader is not None
        sidecar = cluster.members[leader].sidecar
        assert sidecar is not None
        pids = {f"{m.id} sidecar{' (leader)' if m.id == leader else ''}": m.sidecar.pid
                for m in cluster.members.values() if m.sidecar is not None}  # fmt: skip
        pids |= {f"{m.id} kv Module": m.module.pid
                 for m in cluster.members.values() if m.module is not None}  # fmt: skip
        pids["bench Callers (this process)"] = os.getpid()

        bench_result: dict[str, object] = {}
        load = threading.Thread(
            target=lambda: bench_result.update(asyncio.run(drive(addresses, cfg, False)))
        )
        load.start()
        time.sleep(args.warmup)
        command = [spy, "record", "--pid", str(sidecar.pid), "--duration", str(args.seconds),
                   "--rate", str(args.rate), "--format", "raw", "--threads", "--function",
                   "--output", str(args.out), *(["--native"] if args.native else []),
                   *([] if args.all_samples else ["--gil"])]  # fmt: skip
        for _ in range(3):  # py-spy sometimes fails to read a busy target's version
            args.out.unlink(missing_ok=True)
            commit_before = cluster.status(leader).commit_index
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.monotonic()
            record = subprocess.run(command, capture_output=True, text=True)
            if "Failed to find python version" not in record.stderr:
                break
        elapsed = time.monotonic() - started
        cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        commits = cluster.status(leader).commit_index - commit_before
        load.join()
    if record.returncode != 0 or not args.out.exists():
        print(record.stdout + record.stderr, file=sys.stderr)
        return 1
    profile = parse_collapsed(args.out.read_text())
    if profile.samples == 0:
        print("profile_leader: py-spy recorded no busy samples", file=sys.stderr)
        return 1

    window_s = args.seconds
    what = "busy samples" if args.all_samples else "samples with the GIL held"
    print(
        f"Leader {leader} (pid {sidecar.pid}), {args.concurrency} in flight, profiled "
        f"{window_s:g} s at {args.rate} Hz: {profile.samples} {what} "
        f"({profile.samples / (args.rate * window_s):.0%} of the samples py-spy would take "
        f"in {window_s:g} s); {commits} log entries committed meanwhile "
        f"({commits / elapsed:,.0f}/s; bench: {bench_result.get('commits_per_s')} "
        f"commands/s). Raw stacks: {args.out}\n"
    )
    for line in (record.stdout + record.stderr).splitlines():
        if "Samples:" in line:  # py-spy's own count: how many samples it took, errors
            print(f"({line.strip()})\n")
    skip = set() if args.keep_plumbing else profile.plumbing()
    print(f"Top {args.top} by own time (the frame on top of the stack), % of {what}:\n")
    print(top_table(profile, "own", args.top, args.rate, set()))
    print(f"\nTop {args.top} by total time (the frame anywhere on the stack):\n")
    print(top_table(profile, "total", args.top, args.rate, skip))
    if skip:
        print(f"\n(left out: {len(skip)} frames on ≥{PLUMBING:.0%} of their thread's samples)")
    print(f"\nShare of {what} per leader thread:\n")
    print("| thread | % of samples |\n|---|---:|")
    for name, count in profile.threads.most_common():
        print(f"| {_cell(name)} | {100 * count / profile.samples:.1f} |")
    cpu = {name: cpu_after[name] - cpu_before[name] for name in pids}
    # Entries committed, not client commands: the Caller batches several commands per
    # entry; the bench's commits_per_s counts commands.
    per_command = float(str(bench_result.get("commits_per_s") or 0)) * elapsed
    print(
        f"\nCPU over the same {elapsed:.1f} s (py-spy's own CPU not included; "
        f"per command: over bench's {per_command:,.0f} commands at its average rate):\n"
    )
    print("| process | CPU s | % of one core | µs per command |\n|---|---:|---:|---:|")
    for name, seconds in cpu.items():
        per = 1e6 * seconds / per_command if per_command else 0.0
        print(f"| {name} | {seconds:.2f} | {100 * seconds / elapsed:.0f} | {per:.0f} |")
    total = sum(cpu.values())
    per_total = 1e6 * total / per_command if per_command else 0.0
    print(f"| **total** | {total:.2f} | {100 * total / elapsed:.0f} | {per_total:.0f} |")
    summary = {
        "leader": leader,
        "samples": profile.samples,
        "sample_rate": args.rate,
        "seconds": window_s,
        "entries_committed": commits,
        "bench": bench_result,
        "own_top": [[f, c] for f, c in profile.own.most_common(args.top)],
        "total_top": [[f, c] for f, c in profile.total.most_common(args.top)],
        "threads": dict(profile.threads),
        "gil_only": not args.all_samples,
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
