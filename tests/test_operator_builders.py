"""What the operator builds: every object validated against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields are errors), and the choices the issue
asks for checked one by one."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from tinyraft_operator import builders
from tinyraft_operator.settings import Settings
from tinyraft_operator.spec import SpecError, parse

K8S_VERSIONS = ["1.30", "1.33"]


def body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "replicas": 3,
        "module": {"port": 7100},
        "template": {
            "metadata": {"labels": {"team": "storage"}},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "example.org/kv:1",
                        "resources": {"requests": {"cpu": "50m"}},
                    }
                ],
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            },
        },
    }
    base.update(spec)
    return {
        "apiVersion": "tinyraft.dev/v1alpha1",
        "kind": "RaftCluster",
        "metadata": {"name": "kv", "namespace": "prod", "uid": "1234-uid", "generation": 4},
        "spec": base,
    }


def everything(spec_body: dict[str, Any], settings: Settings | None = None) -> list[dict]:
    spec = parse(spec_body)
    settings = settings or Settings(sidecar_image="registry.example/tinyraft:9")
    return [
        builders.stateful_set(spec, settings, spec.replicas),
        builders.peer_service(spec),
        builders.client_service(spec),
        builders.pod_disruption_budget(spec),
    ]


VARIANTS = {
    "defaults": body(),
    "one member": body(replicas=1),
    "tls, tuned sidecar": body(
        replicas=5,
        tls={"secretName": "kv-tls"},
        sidecar={
            "image": "mine/tinyraft:2",
            "imagePullPolicy": "IfNotPresent",
            "resources": {"limits": {"memory": "1Gi"}},
            "logLevel": "debug",
            "timing": {"heartbeatMs": 100, "electionMs": 1000, "shutdownTimeoutSeconds": 30},
            "limits": {
                "maxCommandBytes": 65536,
                "maxPending": 100,
                "snapshotEntries": 5000,
                "snapshotBytes": 1 << 26,
            },
        },
        storage={"size": "10Gi", "storageClassName": "fast"},
        podDisruptionBudget={"maxUnavailable": 2},
    ),
    "user affinity and security context": body(
        template={
            "spec": {
                "containers": [{"name": "app", "image": "x"}],
                "affinity": {
                    "podAntiAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "topologyKey": "topology.kubernetes.io/zone",
                                "labelSelector": {"matchLabels": {"tinyraft.dev/cluster": "kv"}},
                            }
                        ]
                    }
                },
                "securityContext": {"runAsUser": 1000},
            }
        }
    ),
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_built_object_is_valid_kubernetes(variant: str, version: str) -> None:
    for obj in everything(VARIANTS[variant]):
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_does_reject_a_bad_object() -> None:
    sts = everything(body())[0]
    broken = copy.deepcopy(sts)
    broken["spec"]["template"]["spec"]["containers"][1]["livenessProbe"]["grpc"]["portt"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30", strict=True)


def _sidecar(sts: dict) -> dict:
    (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "tinyraft"]
    return c


def _env(sts: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _sidecar(sts)["env"]}


def test_statefulset_shape() -> None:
    sts, peers, client, pdb = everything(body())
    spec = sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["serviceName"] == "kv-peers"
    assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    owner = sts["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "tinyraft.dev/v1alpha1", "kind": "RaftCluster", "name": "kv",
                     "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    labels = sts["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "tinyraft-operator"
    assert labels["app.kubernetes.io/instance"] == "kv"
    pod = spec["template"]
    assert pod["metadata"]["labels"]["team"] == "storage"  # the user's labels are kept
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9100"
    podspec = pod["spec"]
    assert [c["name"] for c in podspec["containers"]] == ["app", "tinyraft"]
    assert podspec["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert podspec["securityContext"]["runAsNonRoot"] is True
    term = podspec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    # Services: a headless peer service that publishes unready pods, a client service.
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert "publishNotReadyAddresses" not in client["spec"]
    assert client["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_sidecar_identity_and_probes() -> None:
    sts = everything(body())[0]
    env = _env(sts)
    assert env["NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["NODE_ADVERTISE_ADDR"] == "$(NODE_ID).kv-peers.$(POD_NAMESPACE).svc:7000"
    names = [e["name"] for e in _sidecar(sts)["env"]]
    assert names.index("POD_NAMESPACE") < names.index("NODE_ADVERTISE_ADDR")  # $(...) order
    assert names.index("NODE_ID") < names.index("NODE_ADVERTISE_ADDR")
    assert env["RAFT_DATA_DIR"].startswith(builders.DATA_MOUNT)
    assert env["MODULE_ADDR"] == "127.0.0.1:7100"
    assert env["RAFT_AUTO_PROMOTE"] == "false"
    assert env["RAFT_BOOTSTRAP"] == "false"  # nobody bootstraps by env
    assert env["RAFT_JOIN"].split(",") == [f"kv-{i}.kv-peers.prod.svc:7000" for i in range(3)]
    c = _sidecar(sts)
    assert c["image"] == "registry.example/tinyraft:9"  # from the operator's settings
    assert c["livenessProbe"]["grpc"] == {"port": 7000, "service": ""}
    assert c["readinessProbe"]["grpc"] == {"port": 7000, "service": "tinyraft.ready"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {p["containerPort"] for p in c["ports"]} == {7000, 9100}
    # the root filesystem is read-only: temporary files (SQLite's too) go to an emptyDir
    assert c["volumeMounts"] == [
        {"name": "data", "mountPath": builders.DATA_MOUNT},
        {"name": builders.TMP_VOLUME, "mountPath": "/tmp"},
    ]
    assert {"name": builders.TMP_VOLUME, "emptyDir": {}} in sts["spec"]["template"]["spec"][
        "volumes"
    ]


def test_tls_and_tuning_reach_the_sidecar() -> None:
    sts, _, _, pdb = everything(VARIANTS["tls, tuned sidecar"])
    env = _env(sts)
    assert env["TLS_CA_FILE"] == f"{builders.TLS_MOUNT}/ca.crt"
    assert env["RAFT_HEARTBEAT_MS"] == "100" and env["RAFT_ELECTION_MS"] == "1000"
    assert env["RAFT_MAX_PENDING"] == "100" and env["LOG_LEVEL"] == "debug"
    c = _sidecar(sts)
    assert c["image"] == "mine/tinyraft:2"  # the cluster's image wins over the default
    assert "tcpSocket" in c["readinessProbe"]  # gRPC probes cannot do mutual TLS
    assert {"name": builders.TLS_VOLUME, "secret": {"secretName": "kv-tls"}} in (
        sts["spec"]["template"]["spec"]["volumes"]
    )
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"
    assert pdb["spec"]["maxUnavailable"] == 2


def test_user_affinity_and_security_context_win() -> None:
    sts = everything(VARIANTS["user affinity and security context"])[0]
    podspec = sts["spec"]["template"]["spec"]
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution" in podspec["affinity"]["podAntiAffinity"]
    )
    assert podspec["securityContext"]["runAsUser"] == 1000


@pytest.mark.parametrize(
    ("replicas", "override", "expected"),
    [(1, None, 1), (2, None, 0), (3, None, 1), (5, None, 1), (5, 2, 2), (7, 3, 3), (3, 0, 0)],
)
def test_pdb_never_allows_losing_quorum(replicas: int, override: int | None, expected: int) -> None:
    extra = {} if override is None else {"podDisruptionBudget": {"maxUnavailable": override}}
    spec = parse(body(replicas=replicas, **extra))
    assert builders.pdb_max_unavailable(spec) == expected


def test_template_hash_ignores_the_replica_count_but_not_the_template() -> None:
    settings = Settings()
    h3 = builders.desired_template_hash(parse(body()), settings)
    assert builders.desired_template_hash(parse(body(replicas=5)), settings) == h3
    changed = body()
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "example.org/kv:2"
    assert builders.desired_template_hash(parse(changed), settings) != h3
    sts = builders.stateful_set(parse(body()), settings, 3)
    assert sts["spec"]["template"]["metadata"]["annotations"][builders.HASH_ANNOTATION] == h3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"replicas": 0}, "spec.replicas"),
        ({"module": {"port": 7000}}, "spec.module.port"),
        ({"template": {"spec": {"containers": []}}}, "containers"),
        ({"template": {"spec": {"containers": [{"name": "tinyraft"}]}}}, "reserved"),
        ({"sidecar": {"timing": {"heartbeatMs": 100, "electionMs": 200}}}, "electionMs"),
        ({"podDisruptionBudget": {"maxUnavailable": 2}}, "floor((replicas-1)/2)"),
        ({"tls": {}}, "secretName"),
    ],
)
def test_parse_refuses_what_cannot_be_done_safely(change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(body(**change))
