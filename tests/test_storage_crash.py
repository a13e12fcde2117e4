"""Crash tests: a real writer process (storage_helpers/crash_writer.py) appends,
overwrites, snapshots and compacts with real fsyncs, and is killed with SIGKILL at
random points, hundreds of times, on the same data dir. After every restart the
recovered state must be exactly the state after its last acknowledged operation, or
after the one it had started but not acknowledged: nothing acknowledged is lost, the
log is contiguous, and the hard state is never older than acknowledged."""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

WRITER = Path(__file__).parent / "storage_helpers" / "crash_writer.py"
KILLS = 200
LINE_DEADLINE = 30.0  # seconds; only guards against a hung writer, never synchronises


@dataclass(frozen=True)
class Model:
    """The writer's state as the test knows it from acknowledgements."""

    hs: tuple[int, str | None, int] = (0, None, 0)
    snap: tuple[int, int] | None = None
    log: dict[int, int] = field(default_factory=dict)  # index -> term, after the snapshot

    def apply(self, intent: list[str]) -> Model:
        kind = intent[1]
        if kind == "A":
            first, last, term, commit = map(int, intent[2:6])
            log = {i: t for i, t in self.log.items() if i < first}
            log.update(dict.fromkeys(range(first, last + 1), term))
            return replace(self, hs=(term, _vote(intent[6]), commit), log=log)
        if kind == "C":
            index, term = int(intent[2]), int(intent[3])
            log = {i: t for i, t in self.log.items() if i > index}
            return replace(self, snap=(index, term), log=log)
        assert kind == "H", intent
        return replace(self, hs=(int(intent[2]), _vote(intent[3]), int(intent[4])))

    def state(self) -> dict[str, Any]:
        runs: list[list[int]] = []
        for index in sorted(self.log):
            term = self.log[index]
            if runs and runs[-1][2] == term and runs[-1][1] == index - 1:
                runs[-1][1] = index
            else:
                runs.append([index, index, term])
        return {
            "hs": list(self.hs),
            "snap": list(self.snap) if self.snap else None,
            "runs": runs,
        }


def _vote(text: str) -> str | None:
    return None if text == "None" else text


class Lines:
    """Complete lines from a child's stdout, each awaited with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self) -> str:
        deadline = time.monotonic() + LINE_DEADLINE
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the writer printed nothing before the deadline"
            if select.select([self.fd], [], [], remaining)[0]:
                chunk = os.read(self.fd, 65536)
                assert chunk, "the writer fork server died"
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


def test_sigkill_during_appends_overwrites_and_compactions(tmp_path: Path) -> None:
    seed = int(os.environ.get("TINYRAFT_CRASH_SEED", "20240601"))  # replay a failure
    rng = random.Random(seed)
    data_dir = tmp_path / "member"
    model = Model()
    pending: list[str] | None = None
    seen = dict.fromkeys(("A", "overwrite", "C", "H", "recovered_unacked", "killed_mid_op"), 0)
    stderr_path = tmp_path / "writer.stderr"
    with stderr_path.open("wb") as stderr:
        server = subprocess.Popen(
            [sys.executable, str(WRITER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert server.stdin is not None
    lines = Lines(server)

    def fail(what: str) -> str:
        return f"seed {seed} run {run}: {what}\n{stderr_path.read_text()[-3000:]}"

    try:
        for run in range(KILLS):
            server.stdin.write(f"{data_dir} {seed}{run:04d}\n".encode())
            server.stdin.flush()
            first = lines.next()
            assert first.startswith("S "), fail(f"the writer did not start: {first!r}")
            recovered = json.loads(first[2:])
            if recovered != model.state():
                assert pending is not None, fail(f"recovered {recovered}, acked {model.state()}")
                model = model.apply(pending)
                assert recovered == model.state(), fail(f"recovered {recovered}")
                seen["recovered_unacked"] += 1
            pending = None

            wanted = rng.randint(0, 30)
            acks = 0
            while acks < wanted or (pending is None and rng.random() < 0.8):
                line = lines.next()
                assert line != "X", fail("the writer died")
                pending, model, acks = _step(line, pending, model, acks, seen)
            # The writer is now inside an operation (or between two); land the kill at
            # a random point of it. This sleep picks a moment, it synchronises nothing.
            time.sleep(rng.uniform(0, 0.002))
            server.stdin.write(b"kill\n")
            server.stdin.flush()
            # Whatever the writer acknowledged before the kill landed counts too.
            while (line := lines.next()) != "X":
                pending, model, acks = _step(line, pending, model, acks, seen)
            seen["killed_mid_op"] += pending is not None
    finally:
        try:  # end of input: the server kills a child still running, then exits
            server.communicate(timeout=LINE_DEADLINE)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    # The random workload really covered every kind of operation and crash outcome.
    assert seen["overwrite"] > 20 and seen["C"] > 20 and seen["H"] > 20, seen
    assert seen["recovered_unacked"] > 0 and seen["killed_mid_op"] > KILLS // 2, seen


def _step(
    line: str, pending: list[str] | None, model: Model, acks: int, seen: dict[str, int]
) -> tuple[list[str] | None, Model, int]:
    if line.startswith("I "):
        return line.split(), model, acks
    assert line == "K" and pending is not None, line
    if pending[1] == "A" and int(pending[2]) <= max(model.log, default=0):
        seen["overwrite"] += 1
    seen[pending[1]] += 1
    return None, model.apply(pending), acks + 1
