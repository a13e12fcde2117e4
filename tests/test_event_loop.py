"""The event loop the sidecar, the Module SDK and the bench run on: uvloop unless
TINYRAFT_EVENT_LOOP says asyncio, and a clear exit for any other value. (Every
process test in the suite runs its sidecars and Modules on the default, uvloop.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from tinyraft import event_loop


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_processes_run_on_uvloop_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert isinstance(event_loop.run(_running_loop()), uvloop.Loop)
    monkeypatch.setenv(event_loop.ENV, "asyncio")
    loop = event_loop.run(_running_loop())
    assert isinstance(loop, asyncio.BaseEventLoop) and not isinstance(loop, uvloop.Loop)


def test_uvloop_asked_for_but_missing_names_both_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets without it
    assert event_loop.loop_factory({}) is asyncio.new_event_loop  # the default falls back
    with pytest.raises(ValueError, match="pip install uvloop, or set TINYRAFT_EVENT_LOOP=asyncio"):
        event_loop.loop_factory({event_loop.ENV: "uvloop"})


def _tinyraft(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, event_loop.ENV: "trio"}
    return subprocess.run(
        [sys.executable, "-m", "tinyraft.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,  # a regression would start a real bench or Module: it ends or is killed
    )


REFUSAL = "tinyraft: TINYRAFT_EVENT_LOOP='trio' is not an event loop; use uvloop or asyncio"


@pytest.mark.parametrize(
    "command", [["bench", "--seconds", "1"], ["example", "kv", "--listen", "127.0.0.1:0"]]
)
def test_an_unknown_event_loop_exits_2_before_anything_starts(
    command: list[str], tmp_path: Path
) -> None:
    done = _tinyraft(command, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == REFUSAL


def test_an_unknown_event_loop_does_not_stop_local_down(tmp_path: Path) -> None:
    """Stopping a cluster runs no loop: a bad variable must not stand in the way."""
    done = _tinyraft(["local", "down", "--data-dir", str(tmp_path / "none")], tmp_path)
    assert REFUSAL not in done.stderr
    assert "no local cluster" in done.stderr
