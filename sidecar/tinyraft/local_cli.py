"""`tinyraft local up | down | restart`: a cluster of real sidecar and Module processes
on loopback, for trying tinyraft out and for experiments.

Everything lives in one directory (--data-dir, default ./.tinyraft-local):

    DIR/local.json          the state file: module, member ids and ports, pids
    DIR/n1/data/            member n1's data dir (log, hard state, snapshots)
    DIR/n1/n1.sidecar.log   its sidecar's output;  DIR/n1/n1.module.log: its Module's

`up` on a directory that already holds a cluster starts the same members on the same
ports, so the cluster comes back as it was (a data dir that has a cluster id ignores
RAFT_BOOTSTRAP and RAFT_JOIN). Processes are tracked by the pids in the state file,
not by who started them: `restart` (another terminal) replaces a sidecar and records
its new pid, `up` keeps displaying it, `down` stops whatever is recorded. A recorded
pid counts only while it is alive, not a zombie, and (on Linux) still that member's
process, so a recycled pid is never signalled."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tinyraft import ops
from tinyraft.local import LocalCluster, LocalMember

STATE_FILE = "local.json"
STOP_TIMEOUT = 25.0  # a sidecar's graceful stop is bounded by SHUTDOWN_TIMEOUT_S (10s)


class LocalError(Exception):
    """A failed `tinyraft local` step, in one sentence (exit status 1)."""


# -- the state file -----------------------------------------------------------------------


@dataclass
class MemberState:
    id: str
    port: int
    module_port: int
    metrics_port: int
    sidecar_pid: int | None = None
    module_pid: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def module_address(self) -> str:
        return f"127.0.0.1:{self.module_port}"


@dataclass
class State:
    module: str
    members: list[MemberState] = field(default_factory=list)
    cluster_id: str = ""
    supervisor_pid: int | None = None  # a foreground `up`, which stops all on Ctrl-C

    def member(self, member_id: str) -> MemberState | None:
        return next((m for m in self.members if m.id == member_id), None)


def _state_path(base: Path) -> Path:
    return base / STATE_FILE


def read_state(base: Path) -> State | None:
    path = _state_path(base)
    try:
        raw = json.loads(path.read_text())
        return State(
            module=raw["module"],
            members=[MemberState(**m) for m in raw["members"]],
            cluster_id=raw.get("cluster_id", ""),
            supervisor_pid=raw.get("supervisor_pid"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LocalError(f"{path} is damaged ({err}); remove {base} to start afresh") from None


def write_state(base: Path, state: State) -> None:
    path = _state_path(base)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    """Serialise read-modify-write of the state file between `tinyraft local` processes."""
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".local.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _update(base: Path, change: Callable[[State], None]) -> State:
    with _locked(base):
        state = read_state(base)
        if state is None:
            raise LocalError(f"no local cluster in {base} (its {STATE_FILE} is gone)")
        change(state)
        write_state(base, state)
        return state


# -- processes ----------------------------------------------------------------------------


def running(pid: int | None, marker: bytes) -> bool:
    """Is pid alive, not a zombie, and (where /proc exists) the process that marker
    identifies (found in its command line or environment)?"""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return False
            ident = (proc / "cmdline").read_bytes() + b"\0" + (proc / "environ").read_bytes()
        except (OSError, IndexError):
            return False
        return marker in ident
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _sidecar_marker(base: Path, member_id: str) -> bytes:
    return f"RAFT_DATA_DIR={base / member_id / 'data'}\0".encode()


def _module_marker(m: MemberState) -> bytes:
    return f"--listen\0{m.module_address}\0".encode()


_SUPERVISOR_MARKER = b"\0local\0up"


def sidecar_running(base: Path, m: MemberState) -> bool:
    return running(m.sidecar_pid, _sidecar_marker(base, m.id))


def module_running(m: MemberState) -> bool:
    return running(m.module_pid, _module_marker(m))


def _signal(pid: int | None, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(alive: Callable[[], list[int]], timeout: float, reap: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if not alive():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _stop_group(
    pids: list[tuple[int, bytes]], timeout: float, reap: Callable[[], None]
) -> list[int]:
    """SIGTERM the processes, wait for them, SIGKILL whatever is left. Returns the pids
    that needed the SIGKILL."""

    def alive() -> list[int]:
        return [pid for pid, marker in pids if running(pid, marker)]

    for pid in alive():
        _signal(pid, signal.SIGTERM)
    if _wait_gone(alive, timeout, reap):
        return []
    stubborn = alive()
    for pid in stubborn:
        _signal(pid, signal.SIGKILL)
    _wait_gone(alive, 10.0, reap)
    return stubborn


def stop_all(
    base: Path,
    states: list[State],
    reap: Callable[[], None] = lambda: None,
    timeout: float = STOP_TIMEOUT,
) -> list[str]:
    """Stop every process the states record: sidecars first (a leader hands over, and
    no sidecar is left without its Module), then the Modules. Returns the ids of the
    members that had a process running."""
    members = [m for state in states for m in state.members]
    ran = sorted({m.id for m in members if sidecar_running(base, m) or module_running(m)})
    _stop_group(
        [(m.sidecar_pid, _sidecar_marker(base, m.id)) for m in members if m.sidecar_pid],
        timeout,
        reap,
    )
    _stop_group([(m.module_pid, _module_marker(m)) for m in members if m.module_pid], timeout, reap)
    return ran


def _cluster(base: Path, state: State) -> LocalCluster:
    """A LocalCluster over the recorded members (no processes attached yet)."""
    cluster = LocalCluster(base, module=state.module)
    for m in state.members:
        cluster.members[m.id] = LocalMember(
            m.id, base / m.id / "data", m.port, m.module_port, m.metrics_port
        )
    return cluster


def _log_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _check_alive(base: Path, cluster: LocalCluster) -> None:
    """Raise if a process we started has exited (e.g. its port is taken)."""
    for m in cluster.members.values():
        for kind, proc in (("sidecar", m.sidecar), ("module", m.module)):
            if proc is not None and proc.poll() is not None:
                log = base / m.id / f"{m.id}.{kind}.log"
                tail = _log_tail(log)
                raise LocalError(
                    f"member {m.id}'s {kind} exited with status {proc.returncode} while "
                    f"starting (see {log}{': ' + tail if tail else ''})"
                )


def _reaper(cluster: LocalCluster) -> Callable[[], None]:
    def reap() -> None:
        for m in cluster.members.values():
            for proc in (m.sidecar, m.module):
                if proc is not None:
                    proc.poll()

    return reap


# -- observation --------------------------------------------------------------------------


def _view(state: State, timeout: float = 0.5) -> ops.ClusterView:
    """Every recorded member's own status, merged with the leader's progress table."""
    addresses = {m.id: m.address for m in state.members}
    if not addresses:
        return ops.ClusterView("", None, None, 0, 0, note="no members")
    with ops.Client(ops.Target(state.members[0].address, timeout)) as client:
        own = ops.own_views(client, addresses, timeout)
    leaders = [s for s in own.values() if s is not None and s.role == "leader"]
    leader = max(leaders, key=lambda s: s.term) if leaders else None
    return ops.build_view(leader, own, addresses)


def _formed(state: State, fresh: bool) -> Callable[[], ops.ClusterView | None]:
    """The condition `up` waits for: a leader, every member in its configuration (all
    voters for a new cluster), and every member answering with the cluster's id."""
    ids = {m.id for m in state.members}

    def check() -> ops.ClusterView | None:
        view = _view(state)
        if view.leader_id is None:
            return None
        rows = [row for row in view.members if row.id in ids]
        if len(rows) != len(ids) or not all(r.reachable and r.cluster_id for r in rows):
            return None
        if {r.cluster_id for r in rows} != {view.cluster_id}:
            return None
        if any(r.suffrage not in ("voter", "learner") for r in rows):
            return None  # not yet in the leader's configuration
        if fresh and any(r.suffrage != "voter" for r in rows):
            return None
        return view

    return check


def _wait(
    condition: Callable[[], Any], timeout: float, what: str, check: Callable[[], None]
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        check()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LocalError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def _processes(base: Path, state: State) -> dict[str, str]:
    out = {}
    for m in state.members:
        sidecar = f"{m.sidecar_pid}" if sidecar_running(base, m) else "[red]stopped[/]"
        module = "" if module_running(m) else " [red](no module)[/]"
        out[m.id] = sidecar + module
    return out


def _addresses_table(base: Path, state: State) -> Table:
    table = Table(title=f"tinyraft local cluster in {base}", title_justify="left")
    for name in ("member", "address", "module", "metrics", "sidecar pid", "log"):
        table.add_column(name)
    for m in state.members:
        table.add_row(
            m.id,
            m.address,
            m.module_address,
            f"http://127.0.0.1:{m.metrics_port}/metrics",
            str(m.sidecar_pid),
            str(base / m.id / f"{m.id}.sidecar.log"),
        )
    return table


def _summary(base: Path, state: State, view: ops.ClusterView, resumed: bool) -> dict[str, Any]:
    return {
        "data_dir": str(base),
        "module": state.module,
        "cluster_id": view.cluster_id,
        "leader": view.leader_id,
        "term": view.term,
        "resumed": resumed,
        "members": [
            {
                "id": m.id,
                "address": m.address,
                "module_address": m.module_address,
                "metrics_address": f"127.0.0.1:{m.metrics_port}",
                "sidecar_pid": m.sidecar_pid,
                "module_pid": m.module_pid,
                "data_dir": str(base / m.id / "data"),
                "log": str(base / m.id / f"{m.id}.sidecar.log"),
            }
            for m in state.members
        ],
    }


# -- commands -----------------------------------------------------------------------------


def up(
    data_dir: Path,
    members: int | None,
    module: str | None,
    detach: bool,
    as_json: bool,
    timeout: float,
) -> int:
    base = data_dir.resolve()
    with _locked(base):
        state = read_state(base)
        if state is not None:
            busy = [m.id for m in state.members if sidecar_running(base, m) or module_running(m)]
            if busy:
                raise LocalError(
                    f"the cluster in {base} is already running ({', '.join(busy)}); "
                    f"stop it first: tinyraft local down --data-dir {data_dir}"
                )
            if members is not None and members != len(state.members):
                raise LocalError(
                    f"{base} holds a {len(state.members)}-member cluster, not {members}; "
                    "leave out --members, or use another --data-dir"
                )
            if module is not None and module != state.module:
                raise LocalError(
                    f"{base} holds a {state.module} cluster, not {module}; leave out "
                    "--module, or use another --data-dir"
                )
            resumed = True
            cluster = _cluster(base, state)
            addresses = [m.address for m in state.members]
            for m in state.members:
                cluster.start_module(m.id)
            for m in state.members:
                # RAFT_JOIN only matters to a member that never finished joining.
                cluster.start_sidecar(m.id, join=[a for a in addresses if a != m.address])
        else:
            if any(base.glob("*/data")):
                raise LocalError(
                    f"{base} holds member data but no {STATE_FILE}; use another --data-dir "
                    "or remove that directory"
                )
            resumed = False
            state = State(module=module or "kv")
            cluster = LocalCluster(base, module=state.module)
            first = cluster.add("n1", bootstrap=True)
            for i in range(2, (members or 3) + 1):
                cluster.add(f"n{i}", join=[first.address])
        for lm in cluster.members.values():
            assert lm.sidecar is not None and lm.module is not None
            record = state.member(lm.id)
            if record is None:
                record = MemberState(lm.id, lm.port, lm.module_port, lm.metrics_port)
                state.members.append(record)
            record.sidecar_pid, record.module_pid = lm.sidecar.pid, lm.module.pid
        state.supervisor_pid = None if detach else os.getpid()
        write_state(base, state)

    what = "the cluster to come back" if resumed else f"{len(state.members)} voters"
    stop = threading.Event()
    if not detach:
        # From here on Ctrl-C (or SIGTERM from `local down`) means: stop everything.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    def check() -> None:
        if stop.is_set():
            raise LocalError("interrupted while starting; stopped what had started")
        _check_alive(base, cluster)

    try:
        with ops.spinner(f"waiting for {what}", not as_json):
            view = _wait(_formed(state, not resumed), timeout, what, check)
    except BaseException:
        stop_all(base, [state], _reaper(cluster))
        _update(base, _forget_pids)
        raise
    _update(base, lambda s: setattr(s, "cluster_id", view.cluster_id))
    state.cluster_id = view.cluster_id

    if as_json:
        ops._print_json(_summary(base, state, view, resumed))
        return 0
    out = ops.console()
    out.print(_addresses_table(base, state))
    verb = "restarted" if resumed else "formed"
    out.print(
        f"{verb} cluster {view.cluster_id}; leader {view.leader_id}. Try:\n"
        f"  tinyraft status --addr {state.members[0].address}\n"
        f"  tinyraft local restart n2 --data-dir {data_dir}"
    )
    if detach:
        out.print(f"stop it with: tinyraft local down --data-dir {data_dir}")
        return 0
    return _watch(base, data_dir, cluster, stop)


def _forget_pids(state: State) -> None:
    for m in state.members:
        m.sidecar_pid = m.module_pid = None
    state.supervisor_pid = None


def _watch(base: Path, data_dir: Path, cluster: LocalCluster, stop: threading.Event) -> int:
    """The live status table until `stop` (Ctrl-C, or SIGTERM from `local down`); then
    stop every member, including those `local restart` started."""
    reap = _reaper(cluster)
    out = ops.console()
    footer = Text(
        f"Ctrl-C stops every member (data stays in {base}).  "
        f"tinyraft local restart ID --data-dir {data_dir} kills and restarts one.",
        style="dim",
    )
    last = read_state(base)
    with Live(console=out, refresh_per_second=4, auto_refresh=False) as live:
        while not stop.is_set():
            reap()
            state = read_state(base)
            if state is None or state.supervisor_pid != os.getpid():
                break  # `local down` (or another `up`) took over
            last = state
            view = _view(state)
            live.update(
                Group(ops.status_table(view, _processes(base, state), compact=True), footer)
            )
            live.refresh()
            stop.wait(0.5)
    # A second Ctrl-C while stopping changes nothing: members are not left half-stopped.
    with ops.spinner("stopping the members"):
        # Both the state now and the last one shown: `local down` may have run meanwhile.
        states = [s for s in (read_state(base), last) if s is not None]
        stopped = stop_all(base, states, reap)
        if states:
            _update(base, _forget_pids)
    out.print(
        f"stopped {', '.join(stopped) or 'nothing (already stopped)'}; the data stays in "
        f"{base} (tinyraft local up --data-dir {data_dir} brings the cluster back)"
    )
    return 0


def down(data_dir: Path, timeout: float) -> int:
    base = data_dir.resolve()
    state = read_state(base)
    if state is None:
        raise LocalError(f"no local cluster in {base} (no {STATE_FILE}; check --data-dir)")
    if running(state.supervisor_pid, _SUPERVISOR_MARKER):
        _signal(state.supervisor_pid, signal.SIGTERM)  # a foreground `up` stops with us
    with ops.spinner(f"stopping the members in {base}"):
        stopped = stop_all(base, [state], timeout=timeout)
    _update(base, _forget_pids)
    print(
        f"stopped {', '.join(stopped)}; the data stays in {base}"
        if stopped
        else f"nothing was running in {base}"
    )
    return 0


def restart(data_dir: Path, member_id: str, timeout: float) -> int:
    base = data_dir.resolve()
    with _locked(base):
        state = read_state(base)
        if state is None:
            raise LocalError(f"no local cluster in {base} (no {STATE_FILE}; check --data-dir)")
        m = state.member(member_id)
        if m is None:
            known = ", ".join(x.id for x in state.members)
            raise LocalError(f"no member {member_id} in {base} (members: {known})")
        if not any(sidecar_running(base, x) for x in state.members if x.id != m.id):
            raise LocalError(
                f"the cluster in {base} is not running; start it with: tinyraft local up "
                f"--data-dir {data_dir}"
            )
        marker = _sidecar_marker(base, m.id)
        old = m.sidecar_pid
        if old is not None and running(old, marker):
            _signal(old, signal.SIGKILL)
            if not _wait_gone(
                lambda: [old] if running(old, marker) else [],
                10.0,
                lambda: None,
            ):
                raise LocalError(
                    f"member {member_id}'s sidecar (pid {m.sidecar_pid}) survived SIGKILL"
                )
        cluster = _cluster(base, state)
        local = cluster.members[m.id]
        if not module_running(m):
            cluster.start_module(m.id)
            assert local.module is not None
            m.module_pid = local.module.pid
        others = [x.address for x in state.members if x.id != m.id]
        cluster.start_sidecar(m.id, join=others)
        assert local.sidecar is not None
        m.sidecar_pid = local.sidecar.pid
        write_state(base, state)

    def back() -> bool:
        with ops.Client(ops.Target(m.address, 1.0)) as client:
            try:
                s = client.admin_status(m.address, 1.0)
            except ops.OpsError:
                return False
        return bool(s.cluster_id and s.leader_id)

    with ops.spinner(f"waiting for {member_id} to come back"):
        _wait(back, timeout, f"{member_id} to come back", lambda: _check_alive(base, cluster))
    print(f"{member_id} restarted (sidecar pid {m.sidecar_pid}) and follows the leader again")
    return 0
