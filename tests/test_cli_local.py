"""`tinyraft local up|down|restart` as a user runs them: real sidecar and Module
processes on loopback, tracked through the state file in the data dir.

A cluster started with `up --detach` outlives the command; `restart` replaces one
member's sidecar; `down` stops every process; `up` on the same directory brings the
same cluster back (same ids, ports and cluster id, data kept, not bootstrapped
again). A foreground `up` shows the cluster until Ctrl-C, then stops every member,
including one that `restart` started behind its back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tinyraft.local import wait_for

CLI = [sys.executable, "-m", "tinyraft.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=90)


def ok(*args: str) -> str:
    done = run(*args)
    assert done.returncode == 0, f"{args} exited {done.returncode}: {done.stdout}{done.stderr}"
    return done.stdout


def fails(*args: str) -> str:
    done = run(*args)
    assert done.returncode == 1, f"{args} exited {done.returncode}: {done.stdout}{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinyraft: "), done.stderr
    return done.stderr


def alive(pid: int) -> bool:
    """Running, and not a zombie (a detached member's parent may be gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def pids(summary: dict) -> list[int]:
    return [p for m in summary["members"] for p in (m["sidecar_pid"], m["module_pid"])]


def state_of(data: Path) -> dict:
    return json.loads((data / "local.json").read_text())


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    """The --data-dir; whatever runs there at the end of the test is stopped."""
    path = tmp_path / "local"
    yield path
    if (path / "local.json").exists():
        run("local", "down", "--data-dir", str(path))
    for log in sorted(path.glob("*/*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log.name}\n" + "\n".join(tail))


def test_up_detached_restart_down_and_up_again_keeps_the_cluster(data):
    d = str(data)
    up = json.loads(
        ok("local", "up", "--detach", "--json", "--members", "3", "--module", "kv", "--data-dir", d)
    )
    assert [m["id"] for m in up["members"]] == ["n1", "n2", "n3"]
    assert up["resumed"] is False and up["module"] == "kv" and up["cluster_id"]
    assert all(alive(pid) for pid in pids(up))
    first = up["members"][0]["address"]

    view = json.loads(ok("status", "--json", "--addr", first))
    assert view["cluster_id"] == up["cluster_id"]
    assert {r["id"] for r in view["members"]} == {"n1", "n2", "n3"}
    assert sum(r["role"] == "leader" for r in view["members"]) == 1
    put = json.dumps({"op": "put", "key": "survivor", "value": "yes"})
    assert ok("apply", put, "--addr", first) == '{"ok":true}\n'

    # Refusals: a second `up` on a running cluster, an unknown member.
    assert "already running" in fails("local", "up", "--detach", "--data-dir", d)
    assert "no member n9" in fails("local", "restart", "n9", "--data-dir", d)

    old = state_of(data)["members"][1]
    out = ok("local", "restart", "n2", "--data-dir", d)
    assert out.startswith("n2 restarted")
    new = state_of(data)["members"][1]
    assert new["sidecar_pid"] != old["sidecar_pid"] and alive(new["sidecar_pid"])
    assert not alive(old["sidecar_pid"])
    assert new["module_pid"] == old["module_pid"]  # only the sidecar was restarted
    n2 = next(
        r for r in json.loads(ok("status", "--json", "--addr", first))["members"] if r["id"] == "n2"
    )
    assert n2["reachable"] and n2["cluster_id"] == up["cluster_id"]

    everything = [*pids(up), new["sidecar_pid"]]
    assert ok("local", "down", "--data-dir", d).startswith("stopped n1, n2, n3")
    assert not [pid for pid in everything if alive(pid)]
    assert "nothing was running" in ok("local", "down", "--data-dir", d)
    assert "is not running" in fails("local", "restart", "n2", "--data-dir", d)

    again = json.loads(ok("local", "up", "--detach", "--json", "--data-dir", d))
    assert again["resumed"] is True
    assert again["cluster_id"] == up["cluster_id"]
    assert [(m["id"], m["address"]) for m in again["members"]] == [
        (m["id"], m["address"]) for m in up["members"]
    ]
    get = json.dumps({"op": "get", "key": "survivor"})
    assert json.loads(ok("query", get, "--addr", first)) == {"value": "yes"}
    log = (data / "n1" / "n1.sidecar.log").read_text()
    assert log.count("bootstrapped a new cluster") == 1
    assert "RAFT_BOOTSTRAP ignored" not in log  # the restart did not even ask

    ok("local", "down", "--data-dir", d)
    assert not [pid for pid in pids(again) if alive(pid)]


def test_foreground_up_stops_every_member_on_ctrl_c(data, tmp_path):
    output = tmp_path / "up.out"
    with output.open("w") as out:
        up = subprocess.Popen(
            [*CLI, "local", "up", "--members", "3", "--data-dir", str(data)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "formed cluster" in output.read_text(), 60, "the cluster to form")
        state = state_of(data)
        assert state["supervisor_pid"] == up.pid
        # A member restarted from another terminal is the foreground `up`'s to stop too.
        ok("local", "restart", "n2", "--data-dir", str(data))
        restarted = state_of(data)["members"][1]["sidecar_pid"]
        started = [p for m in state["members"] for p in (m["sidecar_pid"], m["module_pid"])]
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
    text = output.read_text()
    assert "stopped n1, n2, n3" in text, text
    assert not [pid for pid in [*started, restarted] if alive(pid)]
    assert state_of(data)["supervisor_pid"] is None


def test_down_without_a_cluster_says_so(tmp_path):
    err = fails("local", "down", "--data-dir", str(tmp_path / "nothing"))
    assert "no local cluster in" in err
