"""The README's first command runs the tour on a real cluster; it is also a test."""

import subprocess
import sys


def test_demo_passes_end_to_end():
    run = subprocess.run(
        [sys.executable, "-m", "tinyraft.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Every step checked out." in run.stdout
    assert "✘" not in run.stdout
