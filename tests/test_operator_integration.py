"""The real operator (kopf, in its own process) against kmock's Kubernetes emulator, with
tests/k8s_fixture.py playing the StatefulSet controller and the kubelet: every pod is
a real sidecar and a real kv Module on loopback.

Every scenario ends the same way: the cluster holds every acknowledged write, and the
RaftCluster's status agrees with what the sidecars themselves report."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from k8s_fixture import K8sEnv, k8s_env, wait_for
from tinyraft import BlockingCaller

pytestmark = pytest.mark.timeout(240)

NS = "default"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sEnv]:
    with k8s_env(tmp_path_factory.mktemp("k8s")) as e:
        yield e


@pytest.fixture
def operator(env: K8sEnv) -> Iterator[K8sEnv]:
    """A fresh operator process per test; the test's clusters are torn down after it."""
    env.operator.start()
    yield env
    env.operator.stop()
    for ns in sorted(env.namespaces):
        env.destroy(ns)
    env.namespaces.clear()
    # the emulated controllers' errors are this test's: report them, then start afresh
    errors, env.nodes.errors[:] = env.nodes.errors[:], []
    assert not errors, errors[-1]


def put(key: str, value: str) -> bytes:
    return json.dumps({"op": "put", "key": key, "value": value}).encode()


def get(key: str) -> bytes:
    return json.dumps({"op": "get", "key": key}).encode()


class Writes:
    """Acknowledged writes, to check that none is ever lost."""

    def __init__(self, env: K8sEnv, ns: str, name: str) -> None:
        self.env, self.ns, self.name = env, ns, name
        self.acked: dict[str, str] = {}

    def _caller(self) -> BlockingCaller:
        pods = [p for p in self.env.pods(self.ns) if p.startswith(f"{self.name}-")]
        return BlockingCaller([self.env.nodes.address(self.ns, p) for p in pods], timeout=10.0)

    def write(self, count: int, tag: str) -> None:
        with self._caller() as caller:
            for i in range(count):
                key, value = f"{tag}-{i}", f"v{i}"
                assert caller.apply(put(key, value)) == b'{"ok":true}'
                self.acked[key] = value

    def check(self) -> None:
        with self._caller() as caller:
            for key, value in self.acked.items():
                answer = caller.query(get(key), "linearizable")
                assert json.loads(answer)["value"] == value, key


def converged(env: K8sEnv, ns: str, name: str, voters: int, timeout: float = 60) -> None:
    wait_for(
        lambda: env.status_tells_the_truth(ns, name, voters),
        timeout,
        f"{ns}/{name} to converge on {voters} voters with a truthful status",
        interval=0.25,
    )


def reasons(env: K8sEnv, ns: str, name: str) -> list[tuple[str, str]]:
    return [(e.get("reason", ""), e.get("message", "")) for e in env.events(ns, name)]


def sts(env: K8sEnv, ns: str, name: str) -> dict:
    body = env.api.get(f"/apis/apps/v1/namespaces/{ns}/statefulsets/{name}")
    assert body is not None
    return body


def test_create_three(operator: K8sEnv) -> None:
    env, ns, name = operator, "create", "kv"
    env.create_cluster(ns, name, 3)
    converged(env, ns, name, 3)
    rc = env.rc(ns, name)
    statuses = env.member_statuses(ns, name)
    assert {s.cluster_id for s in statuses.values()} == {rc["status"]["clusterID"]}
    assert rc["status"]["commitIndex"] > 0
    events = reasons(env, ns, name)
    assert sum(1 for r, _ in events if r == "Bootstrap") == 1
    assert sum(1 for r, _ in events if r == "Promote") == 2
    # The owned objects exist, carry owner references, and the pods got their identity.
    for path in (
        f"/api/v1/namespaces/{ns}/services/{name}",
        f"/api/v1/namespaces/{ns}/services/{name}-peers",
        f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}",
        f"/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
    ):
        obj = env.api.get(path)
        assert obj is not None, path
        assert obj["metadata"]["ownerReferences"][0]["uid"] == rc["metadata"]["uid"]
    run_env = env.nodes.running_env(ns, f"{name}-1")
    assert run_env["NODE_ID"] == f"{name}-1"
    assert run_env["RAFT_AUTO_PROMOTE"] == "false"
    writes = Writes(env, ns, name)
    writes.write(20, "a")
    writes.check()
    # Paused: the status still tells, nothing is changed; an even count is warned about.
    before = len(reasons(env, ns, name))
    env.patch_rc(ns, name, {"spec": {"paused": True, "replicas": 4}})
    generation = env.rc(ns, name)["metadata"]["generation"]
    wait_for(
        lambda: (
            (s := env.rc(ns, name)["status"])["observedGeneration"] == generation
            and s["phase"] == "Paused"
        ),
        30,
        "the Paused phase",
    )
    assert any(r == "EvenReplicas" for r, _ in reasons(env, ns, name))
    assert sts(env, ns, name)["spec"]["replicas"] == 3
    assert not [r for r, _ in reasons(env, ns, name)[before:] if r == "AddLearner"]
    # Someone edits an owned Service: a label added to its selector would make it
    # select no pod. The operator puts the selector back whole, on the next spec
    # change (here: resuming) or within ENSURE_EVERY_INTERVALS reconciles.
    svc_url = f"/api/v1/namespaces/{ns}/services/{name}"
    selector = env.api.get(svc_url)["spec"]["selector"]  # type: ignore[index]
    env.api.patch(svc_url, {"spec": {"selector": {"extra": "label"}}})
    env.patch_rc(ns, name, {"spec": {"paused": False, "replicas": 3}})
    converged(env, ns, name, 3)
    wait_for(
        lambda: env.api.get(svc_url)["spec"]["selector"] == selector,  # type: ignore[index]
        10,
        "the operator to restore the client Service's selector",
    )
    metrics = env.operator.metrics()
    assert re.search(r'tinyraft_operator_membership_changes_total\{kind="promote"\} [1-9]', metrics)
    assert re.search(r'tinyraft_operator_reconciles_total\{result="converged"\} [1-9]', metrics)
    assert "tinyraft_operator_converge_seconds_count" in metrics


def test_scale_3_5_3_1(operator: K8sEnv) -> None:
    env, ns, name = operator, "scale", "kv"
    env.create_cluster(ns, name, 3)
    converged(env, ns, name, 3)
    writes = Writes(env, ns, name)
    writes.write(10, "three")
    env.patch_rc(ns, name, {"spec": {"replicas": 5}})
    converged(env, ns, name, 5)
    writes.write(10, "five")
    writes.check()
    env.patch_rc(ns, name, {"spec": {"replicas": 3}})
    converged(env, ns, name, 3)
    claims = {
        c["metadata"]["name"]
        for c in env.api.list(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")
    }
    assert claims == {f"data-{name}-{i}" for i in range(3)}
    assert sts(env, ns, name)["spec"]["replicas"] == 3
    writes.write(10, "back-to-three")
    env.patch_rc(ns, name, {"spec": {"replicas": 1}})
    converged(env, ns, name, 1)
    writes.check()
    removed = [m for r, m in reasons(env, ns, name) if r == "RemoveMember"]
    assert [re.search(r"member (\S+)", m).group(1) for m in removed] == [
        f"{name}-4", f"{name}-3", f"{name}-2", f"{name}-1"
    ]  # fmt: skip


def test_leader_pod_deleted_rejoins_as_the_same_member(operator: K8sEnv) -> None:
    env, ns, name = operator, "restart", "kv"
    env.create_cluster(ns, name, 3)
    converged(env, ns, name, 3)
    writes = Writes(env, ns, name)
    writes.write(10, "before")
    leader, status = env.leader(ns, name)  # type: ignore[misc]
    before = len(reasons(env, ns, name))
    env.api.delete(f"/api/v1/namespaces/{ns}/pods/{leader}")
    wait_for(lambda: (lead := env.leader(ns, name)) and lead[0] != leader, 30, "a new leader")
    writes.write(10, "during")
    converged(env, ns, name, 3)
    # Restart is not removal: no membership change happened.
    after = reasons(env, ns, name)[before:]
    assert not [r for r, _ in after if r in ("RemoveMember", "AddLearner", "ReplacingMember")]
    assert env.member_statuses(ns, name)[leader].cluster_id == status.cluster_id
    writes.check()


def test_wiped_volume_is_replaced(operator: K8sEnv) -> None:
    env, ns, name = operator, "wipe", "kv"
    env.create_cluster(ns, name, 3)
    converged(env, ns, name, 3)
    writes = Writes(env, ns, name)
    writes.write(20, "before")
    leader, _ = env.leader(ns, name)  # type: ignore[misc]
    victim = next(f"{name}-{i}" for i in (2, 1) if f"{name}-{i}" != leader)
    env.nodes.wipe(ns, victim)
    wait_for(
        lambda: any(r == "ReplacingMember" for r, _ in reasons(env, ns, name)),
        30,
        "a ReplacingMember event",
    )
    converged(env, ns, name, 3)
    events = [m for r, m in reasons(env, ns, name) if victim in m]
    assert any("Removed member" in m for m in events)
    assert any("Promoted" in m for m in events)
    status = env.member_statuses(ns, name)[victim]
    assert status.applied_index >= 20
    writes.write(5, "after")
    writes.check()


def test_rolling_update_restarts_the_leader_last(operator: K8sEnv) -> None:
    env, ns, name = operator, "roll", "kv"
    env.create_cluster(ns, name, 3)
    converged(env, ns, name, 3)
    writes = Writes(env, ns, name)
    writes.write(10, "before")
    old_hash = sts(env, ns, name)["spec"]["template"]["metadata"]["annotations"][
        "tinyraft.dev/template-hash"
    ]
    leader_before, _ = env.leader(ns, name)  # type: ignore[misc]
    template = env.rc(ns, name)["spec"]["template"]
    template["spec"]["containers"][0]["image"] = "example.org/kv-module:2"
    env.patch_rc(ns, name, {"spec": {"template": template}})

    def rolled() -> bool:
        pods = env.pods(ns)
        hashes = {p["metadata"]["annotations"]["tinyraft.dev/template-hash"] for p in pods.values()}
        return len(pods) == 3 and old_hash not in hashes

    wait_for(rolled, 90, "every pod to run the new template", interval=0.25)
    converged(env, ns, name, 3)
    deletions = [m for r, m in reasons(env, ns, name) if r == "DeletePod"]
    order = [re.search(r"Deleted pod (\S+)", m).group(1) for m in deletions]
    assert sorted(order) == sorted(f"{name}-{i}" for i in range(3)), order
    transfers = [m for r, m in reasons(env, ns, name) if r == "TransferLeadership"]
    assert transfers and f"from {leader_before}" in transfers[0]
    assert order[-1] == leader_before  # followers first, the leader last
    writes.write(10, "after")
    writes.check()


def test_operator_crash_between_membership_change_and_statefulset(operator: K8sEnv) -> None:
    env, ns, name = operator, "crash", "kv"
    env.create_cluster(ns, name, 3)
    converged(env, ns, name, 3)
    writes = Writes(env, ns, name)
    writes.write(10, "before")
    env.operator.stop()
    env.operator.start(TINYRAFT_OPERATOR_TEST_CRASH_AFTER="RemoveMember")
    env.patch_rc(ns, name, {"spec": {"replicas": 1}})
    assert env.operator.wait_exit(60) == 17  # crashed right after removing kv-2
    _, status = env.leader(ns, name)  # type: ignore[misc]
    assert sorted(m.member_id for m in status.members) == [f"{name}-0", f"{name}-1"]
    assert sts(env, ns, name)["spec"]["replicas"] == 3  # the StatefulSet change never happened
    env.operator.start()
    converged(env, ns, name, 1)
    claims = {
        c["metadata"]["name"]
        for c in env.api.list(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")
    }
    assert claims == {f"data-{name}-0"}
    writes.check()


def test_members_with_different_cluster_ids_stop_automation(
    operator: K8sEnv, tmp_path: Path
) -> None:
    env, ns, name = operator, "split", "kv"
    env.create_cluster(ns, name, 3)
    converged(env, ns, name, 3)
    writes = Writes(env, ns, name)
    writes.write(5, "before")
    # Forge a data dir of another cluster for member kv-2 and put it in kv-2's volume.
    from tinyraft.local import LocalCluster

    with LocalCluster(tmp_path / "other") as other:
        other.add(f"{name}-2", bootstrap=True)
        wait_for(lambda: other.leader() == f"{name}-2", 20, "the other cluster's leader")
        other_id = other.status(f"{name}-2").cluster_id
        other.stop(f"{name}-2")
        env.nodes.replace_volume(ns, f"{name}-2", other.members[f"{name}-2"].data_dir.parent)

    def mismatch() -> bool:
        status = env.rc(ns, name).get("status", {})
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        c = conditions.get("ClusterIDMismatch", {})
        return c.get("status") == "True" and other_id in c.get("message", "")

    wait_for(mismatch, 30, "the ClusterIDMismatch condition")
    assert env.rc(ns, name)["status"]["phase"] == "ClusterIDMismatch"
    before = len(reasons(env, ns, name))
    env.patch_rc(ns, name, {"spec": {"replicas": 5}})
    generation = env.rc(ns, name)["metadata"]["generation"]
    wait_for(
        lambda: env.rc(ns, name)["status"].get("observedGeneration") == generation,
        30,
        "the operator to see the new generation",
    )
    wait_for(lambda: env.operator.metrics().count('result="halted"') and
             _halted(env.operator.metrics()) >= 3, 30, "a few halted reconciles")  # fmt: skip
    assert sts(env, ns, name)["spec"]["replicas"] == 3  # nothing was done
    new = reasons(env, ns, name)[before:]
    assert not [r for r, _ in new if r in ("AddLearner", "RemoveMember", "Promote", "Bootstrap")]
    with BlockingCaller(env.addresses(ns, name)[:2], timeout=10.0) as caller:
        for key, value in writes.acked.items():
            assert json.loads(caller.query(get(key)))["value"] == value


def _halted(metrics: str) -> float:
    m = re.search(r'tinyraft_operator_reconciles_total\{result="halted"\} ([0-9.]+)', metrics)
    return float(m.group(1)) if m else 0.0


def test_deleting_a_broken_cluster_does_not_hang(operator: K8sEnv) -> None:
    env, ns, name = operator, "delete", "kv"
    env.create_cluster(ns, name, 3)
    converged(env, ns, name, 3)
    for i in range(3):  # every member down: no quorum, nobody answers
        env.nodes.running[(ns, f"{name}-{i}")].sidecar.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:

        def quorum_lost() -> bool:
            status = env.rc(ns, name)["status"]
            conditions = {c["type"]: c["status"] for c in status["conditions"]}
            return status["phase"] == "QuorumLost" and conditions == {
                "Available": "False", "Progressing": "False", "Degraded": "True",
                "QuorumLost": "True", "ClusterIDMismatch": "False",
            }  # fmt: skip

        wait_for(quorum_lost, 30, "the status to report QuorumLost")
        env.api.delete(f"/apis/tinyraft.dev/v1alpha1/namespaces/{ns}/raftclusters/{name}")
        wait_for(
            lambda: (
                env.api.get(f"/apis/tinyraft.dev/v1alpha1/namespaces/{ns}/raftclusters/{name}")
                is None
            ),
            30,
            "the RaftCluster to be gone",
        )
        wait_for(
            lambda: env.api.get(f"/apis/apps/v1/namespaces/{ns}/statefulsets/{name}") is None,
            10,
            "the StatefulSet to be gone",
        )
    finally:
        for run in list(env.nodes.running.values()):
            if run.namespace == ns and run.sidecar is not None and run.sidecar.poll() is None:
                run.sidecar.send_signal(signal.SIGCONT)
