"""The operations commands as a user runs them: `python -m tinyraft.cli status|apply|
query|members|transfer-leadership|snapshot` as subprocesses against real clusters.

One 3-member cluster is shared by the module's tests; each leaves it with the same
three voters (a fourth member comes and goes inside one test). Failures are checked
for their contract: exit status 1 and one line on stderr for a failed operation, 2
for bad usage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs import CertAuthority
from tinyraft import ops
from tinyraft.local import LocalCluster, LocalMember, TlsFiles, free_port

CLI = [sys.executable, "-m", "tinyraft.cli"]


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def ok(*args: str, **kwargs) -> str:
    """Run a command that must succeed; its stdout."""
    done = run(*args, **kwargs)
    assert done.returncode == 0, f"{args} exited {done.returncode}: {done.stderr}"
    return done.stdout


def ok_json(*args: str, **kwargs):
    return json.loads(ok(*args, "--json", **kwargs))


def fails(*args: str, status: int = 1, **kwargs) -> str:
    """Run a command that must fail with `status`; its stderr, checked to be one line
    (for operation failures) and never a traceback."""
    done = run(*args, **kwargs)
    assert done.returncode == status, (
        f"{args} exited {done.returncode}, not {status}: {done.stdout}{done.stderr}"
    )
    assert "Traceback" not in done.stderr
    if status == 1:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tinyraft: "), done.stderr
        assert not done.stdout
    return done.stderr


def put(key: str, value: str) -> str:
    return json.dumps({"op": "put", "key": key, "value": value})


def get(key: str) -> str:
    return json.dumps({"op": "get", "key": key})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("ops") / "cluster0")
    try:
        c.form(3)
        yield c
    finally:
        c.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before and "cluster" in request.fixturenames:
        base: Path = request.getfixturevalue("cluster").base_dir
        for log in sorted(base.glob("*/*.log")):
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print(f"--- {log.name}\n" + "\n".join(tail))


def leader_of(cluster: LocalCluster) -> str:
    return cluster.wait_for(cluster.leader, 20, "a leader")


def follower_of(cluster: LocalCluster) -> str:
    leader = leader_of(cluster)
    return next(m for m in ("n1", "n2", "n3") if m != leader)


def addr(cluster: LocalCluster, member: str) -> str:
    return cluster.members[member].address


# -- status ------------------------------------------------------------------------------


def test_status_json_shows_every_member_from_the_leader(cluster):
    leader = leader_of(cluster)
    follower = follower_of(cluster)
    view = ok_json("status", "--addr", addr(cluster, follower))  # a follower: followed
    assert view["leader_id"] == leader
    assert view["leader_address"] == addr(cluster, leader)
    assert view["term"] == cluster.status(leader).term >= 1
    assert view["cluster_id"] == cluster.status(follower).cluster_id != ""
    rows = {row["id"]: row for row in view["members"]}
    assert set(rows) == {"n1", "n2", "n3"}
    assert [r["id"] for r in view["members"] if r["role"] == "leader"] == [leader]
    for row in rows.values():
        assert row["suffrage"] == "voter" and row["reachable"] is True
        assert row["address"] == addr(cluster, row["id"])
        assert row["term"] == view["term"]
        assert row["applied_index"] >= 1 and row["match_index"] >= 1
        assert row["state"] in ("probe", "replicate", "snapshot")
    assert rows[leader]["last_contact_s"] is None
    assert rows[follower]["last_contact_s"] >= 0


def test_status_table_and_the_tinyraft_addr_variable(cluster):
    leader = leader_of(cluster)
    out = ok("status", env={"TINYRAFT_ADDR": addr(cluster, "n2")})
    for word in ("member", "role", "suffrage", "lag", "last contact", "n1", "n2", "n3"):
        assert word in out
    assert f"leader {leader}" in out
    assert out.count("voter") == 3


# -- apply and query ---------------------------------------------------------------------


def test_apply_and_query_through_any_member(cluster):
    follower = addr(cluster, follower_of(cluster))
    assert ok("apply", put("colour", "blue"), "--addr", follower) == '{"ok":true}\n'
    assert ok_json("apply", put("colour", "green"), "--addr", follower) == {
        "result": '{"ok":true}',
        "encoding": "utf-8",
    }
    answer = ok_json("query", get("colour"), "--addr", follower)
    assert answer["consistency"] == "linearizable"
    assert json.loads(answer["answer"]) == {"value": "green"}
    # DATA from stdin; a lease read on a follower; a stale read on the leader.
    assert ok("apply", "-", "--addr", follower, stdin=put("size", "L")) == '{"ok":true}\n'
    lease = ok("query", "-", "--consistency", "lease", "--addr", follower, stdin=get("size"))
    assert json.loads(lease) == {"value": "L"}
    leader = addr(cluster, leader_of(cluster))
    stale = ok("query", get("size"), "--consistency", "stale", "--addr", leader)
    assert json.loads(stale) == {"value": "L"}
    # The Module's own refusal of a bad command is a result, not a CLI failure.
    assert "ValueError" in json.loads(ok("apply", "not json", "--addr", leader))["error"]


def test_a_result_that_is_not_utf8_is_printed_as_base64():
    assert ops._text_or_base64(b"\xff\x00") == ("/wA=", "base64")
    assert ops._text_or_base64("ü".encode()) == ("ü", "utf-8")


# -- members -----------------------------------------------------------------------------


def members(cluster: LocalCluster) -> dict[str, dict]:
    listing = ok_json("members", "list", "--addr", addr(cluster, "n1"))
    return {m["id"]: m for m in listing["members"]}


def test_add_a_member_then_promote_and_remove_it(cluster):
    leader = leader_of(cluster)
    port = free_port()
    new = f"127.0.0.1:{port}"
    via = addr(cluster, follower_of(cluster))  # changes go to the leader from any member

    added = ok_json("members", "add", "n4", new, "--addr", via)
    assert added["suffrage"] == "learner" and added["index"] > 0
    assert members(cluster)["n4"] == {
        "id": "n4",
        "address": new,
        "suffrage": "learner",
        "leader": False,
    }
    # Adding it again is a no-op; under another address it is refused.
    ok("members", "add", "n4", new, "--addr", via)
    err = fails("members", "add", "n4", "127.0.0.1:1", "--addr", via)
    assert "member n4 is already in the cluster" in err
    err = fails("members", "add", leader, "127.0.0.1:1", "--addr", via)
    assert f"member {leader} is already a voter" in err

    # The member itself starts with RAFT_JOIN (to learn the cluster id and catch up),
    # leaving its promotion to the operator.
    cluster.members["n4"] = LocalMember("n4", cluster.base_dir / "n4" / "data", port=port)
    cluster.start_module("n4")
    cluster.start_sidecar("n4", join=[addr(cluster, leader)], env={"RAFT_AUTO_PROMOTE": "false"})

    def caught_up() -> bool:
        s = cluster.try_status("n4")
        return bool(
            s and s.cluster_id and s.role == "learner" and s.applied_index >= added["index"]
        )

    cluster.wait_for(caught_up, 20, "n4 to catch up as a learner")
    assert members(cluster)["n4"]["suffrage"] == "learner"

    ok("members", "promote", "n4", "--addr", via)
    assert members(cluster)["n4"]["suffrage"] == "voter"
    view = ok_json("status", "--addr", via)
    row = next(r for r in view["members"] if r["id"] == "n4")
    assert row["reachable"] and row["suffrage"] == "voter"
    err = fails("members", "promote", "n4", "--addr", via)
    assert "member n4 is not a learner" in err

    removed = ok_json("members", "remove", "n4", "--addr", via)
    assert removed["action"] == "remove" and removed["index"] > added["index"]
    assert set(members(cluster)) == {"n1", "n2", "n3"}
    cluster.kill("n4")
    cluster.signal("n4", signal.SIGKILL, module=True)
    del cluster.members["n4"]


def test_membership_changes_on_unknown_members_fail_with_the_sidecars_reason(cluster):
    via = addr(cluster, "n2")
    assert "member ghost is not in the cluster" in fails(
        "members", "remove", "ghost", "--addr", via
    )
    assert "member ghost is not a learner" in fails("members", "promote", "ghost", "--addr", via)


# -- leadership and snapshots ------------------------------------------------------------


def test_transfer_leadership_to_a_member_and_to_the_most_caught_up(cluster):
    leader = leader_of(cluster)
    target = follower_of(cluster)
    third = next(m for m in ("n1", "n2", "n3") if m not in (leader, target))
    moved = ok_json("transfer-leadership", "--to", target, "--addr", addr(cluster, third))
    assert moved == {"from": leader, "to": target}
    assert cluster.status(target).role == "leader"

    out = ok("transfer-leadership", "--addr", addr(cluster, leader))  # old leader: follows
    assert out.startswith(f"Leadership moved from {target} to ")
    new = cluster.wait_for(cluster.leader, 20, "a leader")
    assert new != target
    assert ok("transfer-leadership", "--to", new, "--addr", addr(cluster, new)) == (
        f"{new} already leads.\n"
    )
    err = fails("transfer-leadership", "--to", "ghost", "--addr", addr(cluster, new))
    assert "ghost is not a voter" in err


def test_snapshot_reports_index_term_and_size(cluster):
    ok("apply", put("snap", "shot"), "--addr", addr(cluster, "n1"))
    status = cluster.status("n3")
    info = ok_json("snapshot", "--addr", addr(cluster, "n3"))
    assert info["member_id"] == "n3"
    assert info["index"] >= status.applied_index and info["term"] >= 1 and info["size"] > 0
    out = ok("snapshot", "--addr", addr(cluster, "n3"))
    assert out.startswith("n3: snapshot at index ")


# -- failures ----------------------------------------------------------------------------


def test_an_unreachable_address_is_one_line_and_exit_1():
    nowhere = f"127.0.0.1:{free_port()}"
    for command in (["status"], ["apply", "x"], ["query", "x"], ["members", "list"], ["snapshot"]):
        err = fails(*command, "--addr", nowhere)
        assert f"cannot reach {nowhere} (is the member running? --addr)" in err


def test_bad_usage_exits_2():
    assert "unrecognized arguments: --bogus" in fails("status", "--bogus", status=2)
    assert "invalid choice" in fails("query", "x", "--consistency", "eventual", status=2)
    assert "expected HOST:PORT" in fails("status", "--addr", "nowhere", status=2)
    assert "TINYRAFT_ADDR" in fails("status", env={"TINYRAFT_ADDR": "nowhere"}, status=2)
    assert "seconds" in fails("status", "--timeout", "0", status=2)
    assert "HOST:PORT" in fails("members", "add", "n9", "no-port", status=2)
    assert "no such file" in fails("status", "--tls-ca", "/nonexistent.pem", status=2)


def test_half_the_tls_flags_exit_2(tmp_path):
    pem = tmp_path / "ca.pem"
    pem.write_text("not used")
    err = fails("status", "--tls-ca", str(pem), status=2)
    assert "--tls-ca, --tls-cert and --tls-key go together" in err
    err = fails("status", "--tls-cert", str(pem), "--tls-key", str(pem), status=2)
    assert "go together" in err


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict]]:
    root = tmp_path_factory.mktemp("pki")
    ca = CertAuthority.create(root / "ca", "cluster-ca")
    client = ca.issue("client")
    other = CertAuthority.create(root / "other", "other-ca").issue("intruder")
    c = LocalCluster(tmp_path_factory.mktemp("tls") / "cluster0", tls=ca.issue("member"))
    try:
        c.form(1)
        yield c, {"client": client, "intruder": TlsFiles(ca.cert_file, other.cert, other.key)}
    finally:
        c.close()


def tls_flags(files: TlsFiles) -> list[str]:
    return ["--tls-ca", str(files.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]


def test_tls_flags_reach_an_mtls_cluster(tls_cluster):
    cluster, pki = tls_cluster
    address = addr(cluster, "n1")
    view = ok_json("status", "--addr", address, *tls_flags(pki["client"]))
    assert view["leader_id"] == "n1" and len(view["members"]) == 1
    assert ok("apply", put("k", "v"), "--addr", address, *tls_flags(pki["client"])) == (
        '{"ok":true}\n'
    )
    # Without TLS, or with a certificate from another CA: one line, exit 1.
    err = fails("status", "--addr", address)
    assert f"{address} closed the connection (does the member require TLS?" in err
    err = fails("status", "--addr", address, *tls_flags(pki["intruder"]))
    assert f"TLS handshake with {address} failed" in err
