"""The Kubernetes objects the operator owns, built as plain dicts from a ClusterSpec.

Pure functions: the same spec and settings give the same objects, so the tests
validate every one of them against the Kubernetes JSON schemas."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from tinyraft_operator.settings import (
    API_VERSION,
    GRPC_PORT,
    KIND,
    METRICS_PORT,
    Settings,
)
from tinyraft_operator.spec import RESERVED_CONTAINER, ClusterSpec

CLUSTER_LABEL = "tinyraft.dev/cluster"
HASH_ANNOTATION = "tinyraft.dev/template-hash"
DATA_VOLUME = "data"
DATA_MOUNT = "/var/lib/tinyraft"
TLS_VOLUME = "tinyraft-tls"
TMP_VOLUME = (
    "tinyraft-tmp"  # the root filesystem is read-only: SQLite and Python temp files go here
)
TLS_MOUNT = "/etc/tinyraft/tls"
READY_SERVICE = "tinyraft.ready"  # the sidecar's readiness health service
NON_ROOT_UID = 65532


def selector_labels(spec: ClusterSpec) -> dict[str, str]:
    return {CLUSTER_LABEL: spec.name}


def labels(spec: ClusterSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tinyraft",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": "raft-member",
        "app.kubernetes.io/part-of": "tinyraft",
        "app.kubernetes.io/managed-by": "tinyraft-operator",
        **selector_labels(spec),
    }


def owner_reference(spec: ClusterSpec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": spec.name,
        "uid": spec.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(spec: ClusterSpec, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": labels(spec),
        "ownerReferences": [owner_reference(spec)],
    }


def _ports() -> list[dict[str, Any]]:
    return [
        {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
         "appProtocol": "grpc"},
        {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
    ]  # fmt: skip


def peer_service(spec: ClusterSpec) -> dict[str, Any]:
    """Headless: gives every pod its stable DNS name, ready or not (members must reach
    a pod that is still joining)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.peer_service),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(spec),
            "ports": _ports(),
        },
    }


def client_service(spec: ClusterSpec) -> dict[str, Any]:
    """For Callers: only ready pods (members with a known leader) receive traffic."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": _ports()[:1],
        },
    }


def pdb_max_unavailable(spec: ClusterSpec) -> int:
    """maxUnavailable: 1 by default, never above floor((n-1)/2) -- except for a single
    member, which gets 1: a budget of 0 would block every node drain forever, and a
    one-member cluster is unavailable during any restart anyway (its data stays on
    the volume)."""
    if spec.replicas == 1:
        return 1
    wanted = 1 if spec.pdb_max_unavailable is None else spec.pdb_max_unavailable
    return min(wanted, (spec.replicas - 1) // 2)


def pod_disruption_budget(spec: ClusterSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "maxUnavailable": pdb_max_unavailable(spec),
            "selector": {"matchLabels": selector_labels(spec)},
        },
    }


def join_addresses(spec: ClusterSpec) -> str:
    """RAFT_JOIN: every ordinal's stable address. A StatefulSet's pods share one
    template, so a pod's own address is in the list too; asking itself fails at once
    and the join loop moves on to the next."""
    return ",".join(spec.pod_address(i) for i in range(spec.replicas))


def _env(spec: ClusterSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE_LISTEN_ADDR", "value": f"0.0.0.0:{GRPC_PORT}"},
        {"name": "NODE_ADVERTISE_ADDR",
         "value": f"$(NODE_ID).{spec.peer_service}.$(POD_NAMESPACE).svc:{GRPC_PORT}"},
        {"name": "RAFT_DATA_DIR", "value": f"{DATA_MOUNT}/data"},
        {"name": "RAFT_JOIN", "value": join_addresses(spec)},
        {"name": "RAFT_AUTO_PROMOTE", "value": "false"},
        {"name": "RAFT_BOOTSTRAP", "value": "false"},
        {"name": "MODULE_ADDR", "value": f"127.0.0.1:{spec.module_port}"},
        {"name": "METRICS_ADDR", "value": f"0.0.0.0:{METRICS_PORT}"},
    ]  # fmt: skip
    optional = [
        ("RAFT_HEARTBEAT_MS", spec.heartbeat_ms),
        ("RAFT_ELECTION_MS", spec.election_ms),
        ("SHUTDOWN_TIMEOUT_S", spec.shutdown_timeout_s),
        ("RAFT_MAX_COMMAND_BYTES", spec.max_command_bytes),
        ("RAFT_MAX_PENDING", spec.max_pending),
        ("RAFT_SNAPSHOT_ENTRIES", spec.snapshot_entries),
        ("RAFT_SNAPSHOT_BYTES", spec.snapshot_bytes),
        ("LOG_LEVEL", spec.log_level),
    ]
    env += [{"name": k, "value": str(v)} for k, v in optional if v is not None]
    if spec.tls_secret:
        env += [
            {"name": "TLS_CERT_FILE", "value": f"{TLS_MOUNT}/tls.crt"},
            {"name": "TLS_KEY_FILE", "value": f"{TLS_MOUNT}/tls.key"},
            {"name": "TLS_CA_FILE", "value": f"{TLS_MOUNT}/ca.crt"},
        ]
    return env


def _probes(spec: ClusterSpec) -> dict[str, Any]:
    if spec.tls_secret:
        # Kubernetes' gRPC probes cannot present a client certificate, and the sidecar
        # serves everything over mutual TLS: fall back to a TCP check (weaker: it does
        # not know whether the member has a leader).
        check: dict[str, Any] = {"tcpSocket": {"port": "grpc"}}
        ready = check
    else:
        check = {"grpc": {"port": GRPC_PORT, "service": ""}}
        ready = {"grpc": {"port": GRPC_PORT, "service": READY_SERVICE}}
    return {
        # A member restoring a big snapshot may take a while to start serving.
        "startupProbe": {**check, "periodSeconds": 2, "failureThreshold": 150},
        "livenessProbe": {**check, "periodSeconds": 10, "timeoutSeconds": 5,
                          "failureThreshold": 3},
        "readinessProbe": {**ready, "periodSeconds": 2, "timeoutSeconds": 2,
                           "failureThreshold": 2},
    }  # fmt: skip


def sidecar_container(spec: ClusterSpec, settings: Settings) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"name": DATA_VOLUME, "mountPath": DATA_MOUNT},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    if spec.tls_secret:
        mounts.append({"name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": True})
    container: dict[str, Any] = {
        "name": RESERVED_CONTAINER,
        "image": spec.image or settings.sidecar_image,
        "command": ["tinyraft", "sidecar"],
        "env": _env(spec),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": spec.sidecar_resources
        or {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        **_probes(spec),
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def _pod_template(spec: ClusterSpec, settings: Settings) -> dict[str, Any]:
    template = copy.deepcopy(spec.template)
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **labels(spec)}
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    pod = template.setdefault("spec", {})
    pod["containers"] = [*pod.get("containers", []), sidecar_container(spec, settings)]
    pod["volumes"] = [*(pod.get("volumes") or []), {"name": TMP_VOLUME, "emptyDir": {}}]
    if spec.tls_secret:
        pod["volumes"].append({"name": TLS_VOLUME, "secret": {"secretName": spec.tls_secret}})
    security = pod.setdefault("securityContext", {})
    for key, value in (
        ("runAsNonRoot", True),
        ("runAsUser", NON_ROOT_UID),
        ("runAsGroup", NON_ROOT_UID),
        ("fsGroup", NON_ROOT_UID),
        ("seccompProfile", {"type": "RuntimeDefault"}),
    ):
        security.setdefault(key, value)
    affinity = pod.setdefault("affinity", {})
    affinity.setdefault(
        "podAntiAffinity",
        {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector_labels(spec)},
                    },
                }
            ]
        },
    )
    grace = (spec.shutdown_timeout_s or 10) + 20
    pod.setdefault("terminationGracePeriodSeconds", max(30, grace))
    meta["annotations"][HASH_ANNOTATION] = template_hash(template)
    return template


def template_hash(template: dict[str, Any]) -> str:
    """What decides whether a pod must be rolled: the pod template without RAFT_JOIN
    (which changes with the replica count, and only matters to an empty member) and
    without the hash itself."""
    clean = copy.deepcopy(template)
    annotations = clean.get("metadata", {}).get("annotations", {})
    annotations.pop(HASH_ANNOTATION, None)
    for c in clean.get("spec", {}).get("containers", []):
        if c.get("name") == RESERVED_CONTAINER:
            c["env"] = [e for e in c.get("env", []) if e.get("name") != "RAFT_JOIN"]
    blob = json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def desired_template_hash(spec: ClusterSpec, settings: Settings) -> str:
    return str(_pod_template(spec, settings)["metadata"]["annotations"][HASH_ANNOTATION])


def pvc_name(spec: ClusterSpec, ordinal: int) -> str:
    return f"{DATA_VOLUME}-{spec.pod_name(ordinal)}"


def stateful_set(spec: ClusterSpec, settings: Settings, replicas: int) -> dict[str, Any]:
    """`replicas` is the operator's current step, not spec.replicas: the StatefulSet
    grows after a learner was added and shrinks after a member was removed."""
    claim: dict[str, Any] = {
        "metadata": {"name": DATA_VOLUME, "labels": labels(spec)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage_size}},
        },
    }
    if spec.storage_class:
        claim["spec"]["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(spec, spec.name),
        "spec": {
            "replicas": replicas,
            "serviceName": spec.peer_service,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": selector_labels(spec)},
            "template": _pod_template(spec, settings),
            "volumeClaimTemplates": [claim],
            # The operator deletes a removed member's claim itself, after the removal
            # committed and the pod is gone.
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
        },
    }
