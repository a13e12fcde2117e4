"""A cluster of real sidecar and Module processes on loopback.

The machinery behind `tinyraft local`, `tinyraft demo`, `tinyraft bench` and the
integration tests: each member is two processes (the sidecar and its Module) with a
real data dir; members can be killed with any signal, paused, restarted, and their
Module killed on its own."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc

T = TypeVar("T")


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port below the kernel's ephemeral range, never handed out twice. A port
    from that range could be taken as the source port of any outgoing connection while
    its member is down, and the restarted member would fail to listen."""
    rng = random.SystemRandom()
    low = min(_ephemeral_low(), 32768)
    for _ in range(1000):
        port = rng.randrange(max(1024, low - 12000), low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral port range")


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass
class LocalMember:
    id: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    module_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    sidecar: subprocess.Popen[bytes] | None = None
    module: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def module_address(self) -> str:
        return f"127.0.0.1:{self.module_port}"


def wait_for[R](condition: Callable[[], R], timeout: float, what: str) -> R:
    """Poll until condition() is truthy; on timeout, fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class LocalCluster:
    def __init__(
        self,
        base_dir: Path,
        module: str = "kv",
        env: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        faults: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.module_name = module
        self.env = env or {}
        self.tls = tls
        self.faults = faults  # enable partitions through the test-only fault files
        self.members: dict[str, LocalMember] = {}

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "tinyraft.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,  # Ctrl-C in a terminal reaches only the parent
            )

    def start_module(self, member_id: str) -> None:
        m = self.members[member_id]
        m.module = self._spawn(
            ["example", self.module_name, "--listen", m.module_address],
            m.data_dir.parent / f"{member_id}.module.log",
            {},
        )

    def start_sidecar(
        self,
        member_id: str,
        bootstrap: bool = False,
        join: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        m = self.members[member_id]
        env = {
            "NODE_ID": m.id,
            "NODE_LISTEN_ADDR": m.address,
            "RAFT_DATA_DIR": str(m.data_dir),
            "MODULE_ADDR": m.module_address,
            "METRICS_ADDR": f"127.0.0.1:{m.metrics_port}",
            "RAFT_BOOTSTRAP": "true" if bootstrap else "false",
            "RAFT_JOIN": ",".join(join or []),
            **self.env,
            **(env or {}),
        }
        if self.faults:
            env["TINYRAFT_TEST_FAULT_FILE"] = str(self._fault_file(member_id))
        if self.tls is not None:
            env.update(
                TLS_CA_FILE=str(self.tls.ca),
                TLS_CERT_FILE=str(self.tls.cert),
                TLS_KEY_FILE=str(self.tls.key),
            )
        m.sidecar = self._spawn(["sidecar"], m.data_dir.parent / f"{member_id}.sidecar.log", env)

    def add(
        self,
        member_id: str,
        bootstrap: bool = False,
        join: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> LocalMember:
        """Start a new member (its Module, then its sidecar); env adds to the cluster's."""
        member = LocalMember(member_id, self.base_dir / member_id / "data")
        self.members[member_id] = member
        self.start_module(member_id)
        self.start_sidecar(member_id, bootstrap, join, env)
        return member

    def form(self, count: int, timeout: float = 30.0) -> None:
        """Bootstrap the first member, join the others, wait for all to be voters."""
        first = self.add("n1", bootstrap=True)
        for i in range(2, count + 1):
            self.add(f"n{i}", join=[first.address])
        ids = [f"n{i}" for i in range(1, count + 1)]
        self.wait_for(lambda: self._all_voters(ids), timeout, f"{count} voters")

    def _all_voters(self, ids: list[str]) -> bool:
        leader = self.leader()
        if leader is None:
            return False
        status = self.status(leader)
        voters = {p.member_id for p in status.members if p.suffrage == "voter"}
        return voters == set(ids)

    def signal(self, member_id: str, sig: int, module: bool = False) -> None:
        m = self.members[member_id]
        proc = m.module if module else m.sidecar
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            if sig == signal.SIGKILL:
                proc.wait(10)

    def kill(self, member_id: str) -> None:
        """SIGKILL the sidecar: everything not on disk is gone."""
        self.signal(member_id, signal.SIGKILL)

    def stop(self, member_id: str, timeout: float = 20.0) -> int:
        m = self.members[member_id]
        assert m.sidecar is not None
        m.sidecar.send_signal(signal.SIGTERM)
        return m.sidecar.wait(timeout)

    def restart(self, member_id: str) -> None:
        self.start_sidecar(member_id)

    def _fault_file(self, member_id: str) -> Path:
        return self.base_dir / f"{member_id}.faults"

    def partition(self, *groups: list[str]) -> None:
        """Cut Raft traffic between the groups (members not named form one more group)."""
        named = {m for g in groups for m in g}
        rest = [m for m in self.members if m not in named]
        sides = [list(g) for g in groups] + ([rest] if rest else [])
        for side in sides:
            others = [m for m in self.members if m not in side]
            for m in side:
                self._fault_file(m).write_text("\n".join(others))

    def heal(self) -> None:
        for m in self.members:
            self._fault_file(m).write_text("")

    def close(self) -> None:
        for m in self.members.values():
            for proc in (m.sidecar, m.module):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observation -------------------------------------------------------------------

    def channel(self, member_id: str) -> grpc.Channel:
        address = self.members[member_id].address
        if self.tls is None:
            return grpc.insecure_channel(address)
        creds = grpc.ssl_channel_credentials(
            self.tls.ca.read_bytes(), self.tls.key.read_bytes(), self.tls.cert.read_bytes()
        )
        return grpc.secure_channel(address, creds)

    def status(self, member_id: str, timeout: float = 2.0) -> apb.AdminStatusResponse:
        with self.channel(member_id) as ch:
            return admin_pb2_grpc.AdminStub(ch).Status(apb.AdminStatusRequest(), timeout=timeout)

    def try_status(self, member_id: str) -> apb.AdminStatusResponse | None:
        try:
            return self.status(member_id, timeout=1.0)
        except grpc.RpcError:
            return None

    def leader(self) -> str | None:
        """The member that says it leads, in the highest term any member reports."""
        best: tuple[int, str] | None = None
        for member_id in self.members:
            s = self.try_status(member_id)
            if s is not None and s.role == "leader" and (best is None or s.term > best[0]):
                best = (s.term, member_id)
        return best[1] if best else None

    def wait_for_new_leader(self, old: str | None, timeout: float = 20.0) -> str:
        """A leader other than `old` (after old was killed, stopped or cut off)."""

        def other() -> str | None:
            lead = self.leader()
            return lead if lead is not None and lead != old else None

        leader = self.wait_for(other, timeout, f"a leader other than {old}")
        assert leader is not None
        return leader

    def addresses(self) -> list[str]:
        return [m.address for m in self.members.values()]

    def wait_for(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        return wait_for(condition, timeout, what)
