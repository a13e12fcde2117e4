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


@pytest.mark.parametrize(
    "command",
    [
        ["bench", "--seconds", "1"],
        ["local", "up", "--detach"],
        ["example", "kv", "--listen", "127.0.0.1:1"],
    ],
)
def test_an_unknown_event_loop_exits_2_before_anything_starts(
    command: list[str], tmp_path: Path
) -> None:
    env = {**os.environ, event_loop.ENV: "trio"}
    done = subprocess.run(
        [sys.executable, "-m", "tinyraft.cli", *command],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "tinyraft: TINYRAFT_EVENT_LOOP='trio' is not an event loop; use uvloop or asyncio"
    )
