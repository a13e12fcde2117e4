"""Operations commands against a running cluster, etcdctl-style: `tinyraft status`,
`apply`, `query`, `members ...`, `transfer-leadership`, `snapshot`.

Each command talks to one member (--addr). Membership changes and leadership
transfers must run on the leader: the command asks the member who leads (Caller
Status) and follows the `tinyraft-leader` hint when the leader moves mid-call.
Every failure a user can meet becomes one sentence on stderr and exit status 1
(argparse exits 2 on bad usage before anything here runs)."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from tinyraft.caller import LEADER_METADATA_KEY, BlockingCaller, RetryPolicy, TinyraftError
from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc, caller_pb2_grpc
from tinyraft.v1 import caller_pb2 as cpb

DEFAULT_ADDR = "127.0.0.1:7001"
DEFAULT_TIMEOUT = 10.0
PEER_VIEW_TIMEOUT = 1.0  # each member's own status in `tinyraft status`: best effort

_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", -1),
]


class OpsError(Exception):
    """A failed operation, said in one sentence; the CLI prints it and exits 1."""


@dataclass(frozen=True)
class Target:
    """Where and how to reach the cluster: one member's HOST:PORT, optional mTLS
    files (all three or none) and a time limit for the whole command."""

    addr: str = DEFAULT_ADDR
    timeout: float = DEFAULT_TIMEOUT
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None


# -- gRPC failures as sentences ----------------------------------------------------------


def _connect_failure(err: grpc.RpcError) -> bool:
    """True when the call never reached a server (refused, unresolvable, TLS handshake)."""
    details = (err.details() or "").lower()
    return err.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details
        or "errors resolving" in details
        or "dns resolution failed" in details
        or "handshake" in details
        or "connection refused" in details
        or "socket closed" in details
        or "connection reset" in details
    )


def explain(err: grpc.RpcError, address: str, what: str, target: Target) -> str:
    """One plain sentence for a failed RPC to `address`."""
    code = err.code()
    details = " ".join((err.details() or "").split())  # one line, whatever the server sent
    if _connect_failure(err):
        lowered = details.lower()
        if "resolving" in lowered or "dns" in lowered:
            return f"cannot resolve the host of {address} (check --addr)"
        if "handshake" in lowered or (target.tls and "socket closed" in lowered):
            return (
                f"TLS handshake with {address} failed (check that --tls-ca, --tls-cert and "
                "--tls-key belong to the cluster's CA, and whether the member uses TLS at all)"
            )
        if not target.tls and ("socket closed" in lowered or "connection reset" in lowered):
            return (
                f"{address} closed the connection (does the member require TLS? "
                "--tls-ca/--tls-cert/--tls-key)"
            )
        return f"cannot reach {address} (is the member running? --addr)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if details and details.lower() != "deadline exceeded":
            return f"{what} did not finish in time at {address}: {details}"
        return f"{address} did not answer {what} within {target.timeout:g}s (try --timeout)"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"{address} cannot serve {what} right now: {details} (try again shortly)"
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        return f"{what} was refused: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return f"{what} was rejected as invalid: {details}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return f"the cluster is overloaded and turned {what} away: {details} (try again later)"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return f"{address} refused our credentials for {what}: {details} (check the TLS flags)"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (
            f"{address} does not serve {what} (is it a tinyraft member of a compatible "
            "version, and is --addr its Raft port?)"
        )
    if code == grpc.StatusCode.CANCELLED:
        return f"{what} at {address} was cancelled"
    return f"{what} failed at {address} with {code.name}: {details}"


def _leader_hint(err: grpc.RpcError) -> str | None:
    for key, value in getattr(err, "trailing_metadata", lambda: ())() or ():
        if key == LEADER_METADATA_KEY and value:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _transient(err: grpc.RpcError) -> bool:
    """Worth another try on the leader before the command's time runs out."""
    code = err.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return not _connect_failure(err)
    # The core refuses a membership change while another is in flight, or before a new
    # leader has committed in its term; both say "retry".
    return code == grpc.StatusCode.FAILED_PRECONDITION and (err.details() or "").rstrip(
        ". "
    ).endswith("retry")


# -- the client ----------------------------------------------------------------------------


class Client:
    """Channels to the members and the RPCs the commands need."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._credentials: grpc.ChannelCredentials | None = None
        if target.tls_ca is not None and target.tls_cert is not None and target.tls_key:
            try:
                self._credentials = grpc.ssl_channel_credentials(
                    root_certificates=target.tls_ca.read_bytes(),
                    private_key=target.tls_key.read_bytes(),
                    certificate_chain=target.tls_cert.read_bytes(),
                )
            except OSError as err:
                raise OpsError(f"cannot read a TLS file: {err}") from None
        self._channels: dict[str, grpc.Channel] = {}
        self.deadline = time.monotonic() + target.timeout

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.05)

    def channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is None:
                channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.secure_channel(address, self._credentials, options=_CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    def admin(self, address: str) -> Any:
        return admin_pb2_grpc.AdminStub(self.channel(address))

    def caller(self, address: str) -> Any:
        return caller_pb2_grpc.CallerStub(self.channel(address))

    def call(
        self,
        address: str,
        method: Callable[..., Any],
        request: Any,
        what: str,
        timeout: float | None = None,
    ) -> Any:
        """One attempt; any failure becomes an OpsError sentence."""
        try:
            return method(request, timeout=timeout or self.remaining(), wait_for_ready=False)
        except grpc.RpcError as err:
            raise OpsError(explain(err, address, what, self.target)) from None

    def member_status(self, address: str | None = None) -> cpb.StatusResponse:
        """Caller.Status of a member: who it is, and who it thinks leads."""
        address = address or self.target.addr
        status: cpb.StatusResponse = self.call(
            address, self.caller(address).Status, cpb.StatusRequest(), "a status request"
        )
        return status

    def admin_status(self, address: str, timeout: float | None = None) -> apb.AdminStatusResponse:
        status: apb.AdminStatusResponse = self.call(
            address,
            self.admin(address).Status,
            apb.AdminStatusRequest(),
            "a status request",
            timeout,
        )
        return status

    def find_leader(self) -> tuple[str, cpb.StatusResponse] | None:
        """The leader's address as the --addr member knows it now (the --addr itself
        when that member leads), with that member's status; None if it knows none."""
        status = self.member_status()
        if status.leader_id and status.leader_id == status.member_id:
            return self.target.addr, status
        if status.leader_address:
            return status.leader_address, status
        return None

    def wait_leader(self) -> tuple[str, cpb.StatusResponse]:
        """find_leader, asking again (an election may be on) until the time is up."""
        delay = 0.05
        while True:
            found = self.find_leader()
            if found is not None:
                return found
            if time.monotonic() + delay >= self.deadline:
                raise OpsError(
                    _no_leader(self.target.addr, self.member_status(), self.target.timeout)
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def on_leader(self, method: str, request: Any, what: str) -> tuple[Any, str]:
        """Call an Admin method on the leader, following leader hints and retrying
        transient refusals until the command's time is up. Returns (answer, leader)."""
        address, _ = self.wait_leader()
        delay = 0.05
        last = ""
        while True:
            try:
                answer = getattr(self.admin(address), method)(
                    request, timeout=self.remaining(), wait_for_ready=False
                )
                return answer, address
            except grpc.RpcError as err:
                if address != self.target.addr and _connect_failure(err):
                    # The leader we were pointed at is gone, or its advertised address
                    # is not reachable from here: ask again who leads.
                    found = self._try_find_leader()
                    if found not in (None, address) and time.monotonic() < self.deadline:
                        assert found is not None
                        address = found
                        continue
                    raise OpsError(
                        f"the leader's advertised address {address} is not reachable from "
                        f"here ({explain(err, address, what, self.target)})"
                    ) from None
                if not _transient(err) or time.monotonic() + delay >= self.deadline:
                    if last and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise OpsError(
                            f"{what} gave up after {self.target.timeout:g}s: {last}"
                        ) from None
                    raise OpsError(explain(err, address, what, self.target)) from None
                last = explain(err, address, what, self.target)
                hint = _leader_hint(err)
                if hint and hint != address and time.monotonic() < self.deadline:
                    address = hint
                    continue
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                if err.code() == grpc.StatusCode.UNAVAILABLE and not hint:
                    address = self._try_find_leader() or address

    def _try_find_leader(self) -> str | None:
        try:
            found = self.find_leader()
        except OpsError:
            return None
        return found[0] if found else None


def _no_leader(addr: str, status: cpb.StatusResponse, timeout: float) -> str:
    if status.role == "joining" or not status.cluster_id:
        return (
            f"{addr} (member {status.member_id}) has not joined a cluster yet: it needs "
            "RAFT_JOIN, or `tinyraft members add` on the cluster and then RAFT_JOIN"
        )
    return (
        f"no leader: {addr} (member {status.member_id}, {status.role} in term {status.term}) "
        f"has known no leader for {timeout:g}s; the cluster may have lost its quorum "
        "(see `tinyraft status`)"
    )


# -- output ----------------------------------------------------------------------------------


def console(stderr: bool = False) -> Console:
    """A rich console; when not a terminal (pipes, tests) wide enough for whole tables."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(file=stream, width=None if terminal else 200, soft_wrap=not terminal)


@contextmanager
def spinner(text: str, enabled: bool = True) -> Iterator[None]:
    """A progress spinner on stderr, only on a terminal (never mixed into --json)."""
    err = console(stderr=True)
    if not enabled or not err.is_terminal:
        yield
        return
    with err.status(text):
        yield


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _text_or_base64(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _ago(seconds: float, is_leader: bool) -> str:
    if is_leader:
        return "-"
    if seconds < 0:
        return "never"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms ago"
    return f"{seconds:.1f}s ago"


# -- status ----------------------------------------------------------------------------------


@dataclass
class MemberRow:
    id: str
    address: str
    role: str  # the member's own view when reachable, else as the leader sees it
    suffrage: str  # voter, learner, or "" when only the member's own view is known
    reachable: bool
    term: int | None = None
    commit_index: int | None = None
    applied_index: int | None = None
    match_index: int | None = None  # from the leader's progress
    lag: int | None = None
    last_contact_s: float | None = None
    state: str = ""  # probe, replicate, snapshot (the leader's replication state)
    cluster_id: str = ""
    module_ready: bool | None = None  # its Module has caught up (own view)


@dataclass
class ClusterView:
    cluster_id: str
    leader_id: str | None
    leader_address: str | None
    term: int
    commit_index: int
    members: list[MemberRow] = field(default_factory=list)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _own_row(status: apb.AdminStatusResponse, address: str) -> MemberRow:
    return MemberRow(
        id=status.member_id,
        address=address,
        role=status.role,
        suffrage="",
        reachable=True,
        term=status.term,
        commit_index=status.commit_index,
        applied_index=status.applied_index,
        cluster_id=status.cluster_id,
        module_ready=status.module_ready,
    )


def build_view(
    leader: apb.AdminStatusResponse | None,
    own: dict[str, apb.AdminStatusResponse | None],
    addresses: dict[str, str],
) -> ClusterView:
    """Merge the leader's progress table with each member's own status."""
    if leader is None:
        rows = []
        for member_id, status in own.items():
            if status is None:
                rows.append(MemberRow(member_id, addresses.get(member_id, ""), "?", "", False))
            else:
                rows.append(_own_row(status, addresses.get(member_id, status.address)))
        known = [s for s in own.values() if s is not None]
        return ClusterView(
            cluster_id=next((s.cluster_id for s in known if s.cluster_id), ""),
            leader_id=None,
            leader_address=None,
            term=max((s.term for s in known), default=0),
            commit_index=max((s.commit_index for s in known), default=0),
            members=rows,
            note="no leader known",
        )
    rows = []
    for progress in leader.members:
        status = own.get(progress.member_id)
        is_leader = progress.member_id == leader.member_id
        row = MemberRow(
            id=progress.member_id,
            address=progress.address,
            role=progress.role,
            suffrage=progress.suffrage,
            reachable=status is not None,
            match_index=progress.match_index,
            lag=progress.lag,
            last_contact_s=None if is_leader else progress.last_contact_s,
            state=progress.state,
        )
        if status is not None:
            row.role = status.role
            row.term = status.term
            row.commit_index = status.commit_index
            row.applied_index = status.applied_index
            row.cluster_id = status.cluster_id
            row.module_ready = status.module_ready
        rows.append(row)
    listed = {row.id for row in rows}
    for member_id, status in own.items():  # e.g. a removed member still running
        if member_id not in listed:
            if status is None:
                rows.append(MemberRow(member_id, addresses.get(member_id, ""), "?", "-", False))
            else:
                row = _own_row(status, addresses.get(member_id, status.address))
                row.suffrage = "-"
                rows.append(row)
    return ClusterView(
        cluster_id=leader.cluster_id,
        leader_id=leader.member_id,
        leader_address=leader.address,
        term=leader.term,
        commit_index=leader.commit_index,
        members=rows,
    )


def status_table(
    view: ClusterView, process: dict[str, str] | None = None, compact: bool = False
) -> Table:
    """The cluster as a table; compact (for `local up`'s live view, 80 columns) keeps
    the columns that change: role, term, commit/applied index, lag and last contact."""
    leader = (
        f"leader [bold]{view.leader_id}[/] ({view.leader_address})"
        if view.leader_id
        else "[bold red]no leader known[/]"
    )
    table = Table(
        title=f"cluster {view.cluster_id or '(none)'}   {leader}   term {view.term}   "
        f"commit {view.commit_index}",
        title_justify="left",
    )
    columns = [
        ("member", "left"),
        ("address", "left"),
        ("role", "left"),
        ("suffrage", "left"),
        ("term", "right"),
        ("commit", "right"),
        ("applied", "right"),
        ("match", "right"),
        ("lag", "right"),
        ("last contact", "right"),
        ("state", "left"),
    ]
    if compact:
        columns = [c for c in columns if c[0] not in ("address", "suffrage", "match", "state")]
    if process is not None:
        columns.append(("process", "left"))
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=compact)  # type: ignore[arg-type]

    def num(value: int | None) -> str:
        return "-" if value is None else str(value)

    for row in view.members:
        role = row.role if row.reachable else f"[red]unreachable[/] ({row.role})"
        if row.reachable and row.role == "leader":
            role = "[bold green]leader[/]"
        if compact and row.suffrage == "learner" and row.role != "learner":
            role += " (learner)"
        lag = num(row.lag)
        if row.lag:
            lag = f"[yellow]{lag}[/]"
        contact = (
            "-"
            if row.last_contact_s is None
            else _ago(row.last_contact_s, row.id == view.leader_id)
        )
        cells = {
            "member": row.id,
            "address": row.address,
            "role": role,
            "suffrage": row.suffrage or "-",
            "term": num(row.term),
            "commit": num(row.commit_index),
            "applied": num(row.applied_index),
            "match": num(row.match_index),
            "lag": lag,
            "last contact": contact.removesuffix(" ago") if compact else contact,
            "state": row.state or "-",
            "process": (process or {}).get(row.id, "-"),
        }
        table.add_row(*(cells[name] for name, _ in columns))
    return table


def own_views(
    client: Client, addresses: dict[str, str], timeout: float = PEER_VIEW_TIMEOUT
) -> dict[str, apb.AdminStatusResponse | None]:
    """Each member's Admin.Status, asked concurrently; None where unreachable."""
    futures = {
        member_id: client.admin(address).Status.future(
            apb.AdminStatusRequest(), timeout=timeout, wait_for_ready=False
        )
        for member_id, address in addresses.items()
    }
    views: dict[str, apb.AdminStatusResponse | None] = {}
    for member_id, future in futures.items():
        try:
            views[member_id] = future.result()
        except grpc.RpcError:
            views[member_id] = None
    return views


def gather(client: Client) -> ClusterView:
    """The cluster from the leader's view, with each member's own applied index."""
    addr = client.target.addr
    asked = client.admin_status(addr)
    leader: apb.AdminStatusResponse | None = asked
    if asked.role != "leader":
        found = client.find_leader()
        leader = None
        if found is not None:
            try:
                leader = client.admin_status(found[0])
            except OpsError:
                leader = None  # shown as this member's view, with a note
            if leader is not None and leader.role != "leader":
                leader = None  # it stepped down between the two questions
    if leader is None:
        view = build_view(None, {asked.member_id: asked}, {asked.member_id: addr})
        view.note = (
            f"no leader known to {asked.member_id}: showing only its own view"
            if asked.leader_id == ""
            else f"the leader {asked.leader_id} is not reachable from here: showing only "
            f"{asked.member_id}'s own view"
        )
        return view
    others = {
        p.member_id: p.address
        for p in leader.members
        if p.member_id not in (leader.member_id, asked.member_id)
    }
    own = own_views(client, others, min(PEER_VIEW_TIMEOUT, client.remaining()))
    own[leader.member_id] = leader
    own[asked.member_id] = asked
    return build_view(leader, own, {})


def status(target: Target, as_json: bool) -> int:
    with Client(target) as client:
        view = gather(client)
    if as_json:
        _print_json(view.as_json())
        return 0
    out = console()
    out.print(status_table(view))
    if view.note:
        console(stderr=True).print(f"[yellow]note:[/] {view.note}")
    return 0


# -- apply and query ---------------------------------------------------------------------------


def _caller(target: Target) -> BlockingCaller:
    return BlockingCaller(
        [target.addr],
        tls_ca=target.tls_ca,
        tls_cert=target.tls_cert,
        tls_key=target.tls_key,
        timeout=min(5.0, target.timeout),
        retry=RetryPolicy(deadline=target.timeout),
        wait_for_ready=False,
    )


def _read_data(data: str) -> bytes:
    if data == "-":
        return sys.stdin.buffer.read()
    return data.encode("utf-8")


def _print_result(key: str, data: bytes, as_json: bool, extra: dict[str, Any]) -> None:
    text, encoding = _text_or_base64(data)
    if as_json:
        _print_json({key: text, "encoding": encoding, **extra})
        return
    if encoding == "base64":
        print(f"tinyraft: the {key} is not UTF-8; printed as base64", file=sys.stderr)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _sdk(what: str, run: Callable[[BlockingCaller], bytes], target: Target) -> bytes:
    with Client(target) as client:
        client.member_status()  # fails fast, and plainly, on a wrong --addr or TLS flags
    with spinner(f"{what}..."), _caller(target) as caller:
        try:
            return run(caller)
        except TinyraftError as err:
            raise OpsError(" ".join(str(err).split())) from None


def apply(target: Target, data: str, as_json: bool) -> int:
    command = _read_data(data)
    result = _sdk("applying", lambda caller: caller.apply(command), target)
    _print_result("result", result, as_json, {})
    return 0


def query(target: Target, data: str, consistency: str, as_json: bool) -> int:
    request = _read_data(data)
    answer = _sdk(
        "querying",
        lambda caller: caller.query(request, consistency),  # type: ignore[arg-type]
        target,
    )
    _print_result("answer", answer, as_json, {"consistency": consistency})
    return 0


# -- members ---------------------------------------------------------------------------------


def members_list(target: Target, as_json: bool) -> int:
    with Client(target) as client:
        address, _ = client.wait_leader()
        leader = client.admin_status(address)
    if leader.role != "leader":
        raise OpsError(f"{address} stopped leading while asked; try again")
    members = [
        {
            "id": p.member_id,
            "address": p.address,
            "suffrage": p.suffrage,
            "leader": p.member_id == leader.member_id,
        }
        for p in leader.members
    ]
    if as_json:
        _print_json({"cluster_id": leader.cluster_id, "members": members})
        return 0
    table = Table(title=f"cluster {leader.cluster_id}", title_justify="left")
    for name in ("member", "address", "suffrage", "leader"):
        table.add_column(name)
    for m in members:
        table.add_row(m["id"], m["address"], m["suffrage"], "yes" if m["leader"] else "")
    console().print(table)
    return 0


def _membership(
    target: Target, method: str, request: Any, what: str, doing: str, as_json: bool
) -> apb.MembershipResponse:
    with Client(target) as client, spinner(doing, not as_json):
        answer, _ = client.on_leader(method, request, what)
    response: apb.MembershipResponse = answer
    return response


def members_add(target: Target, member_id: str, address: str, as_json: bool) -> int:
    response = _membership(
        target,
        "AddLearner",
        apb.AddLearnerRequest(member_id=member_id, address=address),
        f"adding member {member_id}",
        f"adding {member_id} ({address}) as a learner",
        as_json,
    )
    if as_json:
        _print_json(
            {
                "action": "add",
                "member_id": member_id,
                "address": address,
                "suffrage": "learner",
                "cluster_id": response.cluster_id,
                "index": response.index,
            }
        )
        return 0
    print(
        f"{member_id} ({address}) is a learner of cluster {response.cluster_id} (index {response.index})."
    )
    print(
        f"Start its sidecar with RAFT_JOIN={target.addr} so it learns the cluster id and "
        f"catches up; then `tinyraft members promote {member_id}` (or let RAFT_AUTO_PROMOTE do it)."
    )
    return 0


def members_promote(target: Target, member_id: str, as_json: bool) -> int:
    response = _membership(
        target,
        "Promote",
        apb.MemberRequest(member_id=member_id),
        f"promoting member {member_id}",
        f"promoting {member_id} to voter",
        as_json,
    )
    if as_json:
        _print_json(
            {
                "action": "promote",
                "member_id": member_id,
                "suffrage": "voter",
                "cluster_id": response.cluster_id,
                "index": response.index,
            }
        )
        return 0
    print(f"{member_id} is a voter (index {response.index}).")
    return 0


def members_remove(target: Target, member_id: str, as_json: bool) -> int:
    response = _membership(
        target,
        "RemoveMember",
        apb.MemberRequest(member_id=member_id),
        f"removing member {member_id}",
        f"removing {member_id}",
        as_json,
    )
    if as_json:
        _print_json(
            {
                "action": "remove",
                "member_id": member_id,
                "cluster_id": response.cluster_id,
                "index": response.index,
            }
        )
        return 0
    print(f"{member_id} is no longer a member (index {response.index}); stop its process.")
    return 0


# -- leadership and snapshots ---------------------------------------------------------------


def transfer_leadership(target: Target, to: str | None, as_json: bool) -> int:
    with Client(target) as client:
        _, asked = client.wait_leader()
        before = asked.leader_id
        with spinner(f"handing leadership to {to or 'the most caught-up voter'}", not as_json):
            answer, _ = client.on_leader(
                "TransferLeadership",
                apb.TransferLeadershipRequest(member_id=to or ""),
                "the leadership transfer",
            )
    after: str = answer.member_id
    if as_json:
        _print_json({"from": before, "to": after})
        return 0
    if after == before:
        print(f"{after} already leads.")
    else:
        print(f"Leadership moved from {before} to {after}.")
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def snapshot(target: Target, as_json: bool) -> int:
    """Snapshot the --addr member now (each member snapshots its own state)."""
    with Client(target) as client:
        who = client.member_status()
        with spinner(f"snapshotting {who.member_id}", not as_json):
            info: apb.SnapshotResponse = client.call(
                target.addr,
                client.admin(target.addr).Snapshot,
                apb.SnapshotRequest(),
                "the snapshot",
            )
    if as_json:
        _print_json(
            {"member_id": who.member_id, "index": info.index, "term": info.term, "size": info.size}
        )
        return 0
    print(
        f"{who.member_id}: snapshot at index {info.index} (term {info.term}), {_size(info.size)}."
    )
    return 0
