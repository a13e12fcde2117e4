"""Latency against throughput: `tinyraft bench` at rising concurrency, then open loop at
half the peak it found.

    python benchmarks/sweep.py --seconds 10
    python benchmarks/sweep.py --seconds 10 --update-doc docs/performance.md

Each point is one `tinyraft bench --json` subprocess (a fresh 3-member cluster, 128-byte
commands, fsync on, closed loop). After the sweep, one more run sends at half the best
throughput seen (`--rate`, open loop: latency from each scheduled send time), which is
the issue's "p99 at half of peak throughput". Writes a PNG of p50 and p99 (log scale)
against throughput, prints a markdown table, and prints one JSON object as the last
line of stdout (also to --out). Progress goes to stderr.

With --update-doc FILE, the text between `<!-- sweep:begin -->` and `<!-- sweep:end -->`
in FILE is replaced by the table and a link to the PNG. Needs matplotlib (the `bench`
extra: pip install -e '.[bench]')."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- sweep:begin -->", "<!-- sweep:end -->"
DEFAULT_CONCURRENCY = "1,4,16,64,256,1024,4096"


def _concurrency_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected counts >= 1, comma-separated, not {text!r}")
    return values


def bench(seconds: float, concurrency: int, rate: float | None = None) -> dict[str, object]:
    cmd = [sys.executable, "-m", "tinyraft.cli", "bench", "--json", "--members", "3",
           "--size", "128", "--seconds", str(seconds), "--concurrency", str(concurrency)]  # fmt: skip
    if rate is not None:
        cmd += ["--rate", f"{rate:.1f}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600 + 3 * seconds)
    lines = run.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"sweep: {' '.join(cmd[2:])} failed:\n{run.stderr}")
    return json.loads(lines[-1])  # errors > 0 exits 1 but still reports: keep the point


def _num(result: dict[str, object], key: str) -> float:
    value = result[key]
    assert isinstance(value, int | float), (key, value)
    return float(value)


def table(points: list[dict[str, object]], half: dict[str, object] | None) -> str:
    rows = [
        "| in flight | commits/s | p50 ms | p99 ms | p99.9 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        rows.append(
            f"| {p['concurrency']} | {_num(p, 'commits_per_s'):,.0f} | {_num(p, 'p50_ms'):.1f} "
            f"| {_num(p, 'p99_ms'):.1f} | {_num(p, 'p999_ms'):.1f} | {p['errors']} |"
        )
    if half is not None:
        rows.append(
            f"| open loop at {_num(half, 'target_rate'):,.0f}/s (half of peak), "
            f"≤{half['concurrency']} | {_num(half, 'commits_per_s'):,.0f} "
            f"| {_num(half, 'p50_ms'):.1f} | {_num(half, 'p99_ms'):.1f} "
            f"| {_num(half, 'p999_ms'):.1f} | {half['errors']} |"
        )
    return "\n".join(rows)


def plot(points: list[dict[str, object]], half: dict[str, object] | None, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    x = [_num(p, "commits_per_s") for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, label, style in (("p50_ms", "p50", "o-"), ("p99_ms", "p99", "s-")):
        ax.plot(x, [_num(p, key) for p in points], style, label=f"{label}, closed loop")
    for p, xv in zip(points, x, strict=True):
        ax.annotate(
            str(p["concurrency"]),
            (xv, _num(p, "p99_ms")),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
            color="0.35",
        )
    if half is not None:
        hx = _num(half, "commits_per_s")
        ax.plot([hx], [_num(half, "p50_ms")], "D", color="tab:green", label="p50, open loop")
        ax.plot([hx], [_num(half, "p99_ms")], "D", color="tab:red", label="p99, open loop")
        ax.annotate(
            "half of peak",
            (hx, _num(half, "p99_ms")),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
            color="tab:red",
        )
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("throughput (commits/s)")
    ax.set_ylabel("client latency (ms, log scale)")
    ax.set_title("tinyraft: 3 members, 128-byte commands, fsync on (labels: calls in flight)")
    ax.title.set_fontsize(10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def _check_markers(doc: Path) -> str:
    try:
        text = doc.read_text()
    except OSError as err:
        print(f"sweep: cannot read --update-doc {doc}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        print(
            f"sweep: {doc} has no {BEGIN} ... {END} markers; add them (each on its own "
            "line) where the sweep's table should go",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return text


def update_doc(doc: Path, body: str) -> None:
    text = _check_markers(doc)
    begin, end = text.find(BEGIN) + len(BEGIN), text.find(END)
    doc.write_text(text[:begin] + "\n" + body + "\n" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=_concurrency_list(DEFAULT_CONCURRENCY),
        metavar="N,N,...",
        help=f"calls in flight, one run each (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--png",
        type=Path,
        default=ROOT / "docs" / "performance-sweep.png",
        help="the plot (default docs/performance-sweep.png)",
    )
    parser.add_argument(
        "--no-half-peak", action="store_true", help="skip the open-loop run at half the peak"
    )
    parser.add_argument("--update-doc", type=Path, metavar="FILE", help="see above")
    args = parser.parse_args()
    if not args.seconds > 0:
        parser.error(f"--seconds: expected a number > 0, not {args.seconds}")
    if args.update_doc is not None:
        _check_markers(args.update_doc)  # before minutes of benchmarking, not after

    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    points = []
    for c in args.concurrency:
        result = bench(args.seconds, c)
        print(json.dumps(result), file=sys.stderr, flush=True)
        points.append(result)
    half = None
    if not args.no_half_peak:
        peak = max(_num(p, "commits_per_s") for p in points)
        best = max(points, key=lambda p: _num(p, "commits_per_s"))
        half = bench(args.seconds, int(_num(best, "concurrency")), rate=peak / 2)
        print(json.dumps(half), file=sys.stderr, flush=True)

    md = table(points, half)
    plot(points, half, args.png)
    summary: dict[str, object] = {
        "started": started,
        "seconds": args.seconds,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "points": points,
        "half_peak": half,
        "png": str(args.png),
    }
    if args.update_doc is not None:
        link = os.path.relpath(args.png.resolve(), args.update_doc.resolve().parent)
        body = (
            f"Sweep of {started} ({args.seconds:g} s per point, 1-minute load average "
            f"{load_before:.1f} at the start; `benchmarks/sweep.py`):\n\n{md}\n\n"
            f"![p50 and p99 latency against throughput]({link})"
        )
        update_doc(args.update_doc, body)
    text = json.dumps(summary)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(md)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
