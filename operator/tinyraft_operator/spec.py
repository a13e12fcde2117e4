"""A RaftCluster's spec as typed values, with the defaults the CRD also declares.

The CRD's schema and CEL rules reject bad specs at the API server; `parse` repeats the
checks the operator relies on, so a spec that reached it some other way (an older
CRD, a test) is refused with the same kind of message instead of half-applied."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinyraft_operator.settings import GRPC_PORT, METRICS_PORT

RESERVED_CONTAINER = "tinyraft"


class SpecError(ValueError):
    """The spec cannot be acted on; the message names the field."""


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    namespace: str
    uid: str
    generation: int
    replicas: int
    template: dict[str, Any]
    module_port: int
    paused: bool = False
    image: str | None = None
    image_pull_policy: str | None = None
    sidecar_resources: dict[str, Any] = field(default_factory=dict)
    log_level: str | None = None
    heartbeat_ms: int | None = None
    election_ms: int | None = None
    shutdown_timeout_s: int | None = None
    max_command_bytes: int | None = None
    max_pending: int | None = None
    snapshot_entries: int | None = None
    snapshot_bytes: int | None = None
    storage_size: str = "1Gi"
    storage_class: str | None = None
    tls_secret: str | None = None
    pdb_max_unavailable: int | None = None

    @property
    def peer_service(self) -> str:
        return f"{self.name}-peers"

    def pod_name(self, ordinal: int) -> str:
        return f"{self.name}-{ordinal}"

    def pod_address(self, ordinal: int) -> str:
        """The stable DNS name of a member's pod, as it advertises itself."""
        return f"{self.pod_name(ordinal)}.{self.peer_service}.{self.namespace}.svc:{GRPC_PORT}"


def _get(obj: Mapping[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _int(spec: Mapping[str, Any], path: str, low: int, high: int | None = None) -> int | None:
    value = _get(spec, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"spec.{path}: expected a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise SpecError(f"spec.{path}: must be {bound}, got {value}")
    return value


def parse(body: Mapping[str, Any]) -> ClusterSpec:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    replicas = _int(spec, "replicas", 1, 9)
    if replicas is None:
        raise SpecError("spec.replicas: required")
    template = spec.get("template")
    if not isinstance(template, Mapping):
        raise SpecError("spec.template: required: the pod template with your Module container")
    containers = _get(template, "spec.containers")
    if not isinstance(containers, list) or not containers:
        raise SpecError("spec.template.spec.containers: at least one container is required")
    for i, c in enumerate(containers):
        if not isinstance(c, Mapping) or not c.get("name"):
            raise SpecError(f"spec.template.spec.containers[{i}].name: required")
        if c["name"] == RESERVED_CONTAINER:
            raise SpecError(
                f"spec.template.spec.containers[{i}].name: {RESERVED_CONTAINER!r} is reserved "
                "for the injected sidecar"
            )
    module_port = _int(spec, "module.port", 1, 65535)
    if module_port is None:
        raise SpecError("spec.module.port: required")
    if module_port in (GRPC_PORT, METRICS_PORT):
        raise SpecError(
            f"spec.module.port: must differ from the sidecar's ports {GRPC_PORT} and {METRICS_PORT}"
        )
    heartbeat = _int(spec, "sidecar.timing.heartbeatMs", 1, 60_000)
    election = _int(spec, "sidecar.timing.electionMs", 3, 600_000)
    if heartbeat is not None and election is not None and election < 3 * heartbeat:
        raise SpecError("spec.sidecar.timing.electionMs: must be at least 3 times heartbeatMs")
    pdb = _int(spec, "podDisruptionBudget.maxUnavailable", 0)
    if pdb is not None and replicas > 1 and pdb > (replicas - 1) // 2:
        raise SpecError(
            f"spec.podDisruptionBudget.maxUnavailable: at most floor((replicas-1)/2) = "
            f"{(replicas - 1) // 2} for {replicas} replicas, got {pdb}"
        )
    tls = spec.get("tls")
    tls_secret = None
    if tls is not None:
        tls_secret = tls.get("secretName") if isinstance(tls, Mapping) else None
        if not tls_secret:
            raise SpecError("spec.tls.secretName: required when tls is set")
    return ClusterSpec(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        replicas=replicas,
        template=copy.deepcopy(dict(template)),
        module_port=module_port,
        paused=bool(spec.get("paused", False)),
        image=_get(spec, "sidecar.image") or None,
        image_pull_policy=_get(spec, "sidecar.imagePullPolicy") or None,
        sidecar_resources=copy.deepcopy(dict(_get(spec, "sidecar.resources") or {})),
        log_level=_get(spec, "sidecar.logLevel") or None,
        heartbeat_ms=heartbeat,
        election_ms=election,
        shutdown_timeout_s=_int(spec, "sidecar.timing.shutdownTimeoutSeconds", 1, 3600),
        max_command_bytes=_int(spec, "sidecar.limits.maxCommandBytes", 1, 64 * 1024 * 1024),
        max_pending=_int(spec, "sidecar.limits.maxPending", 1, 10_000_000),
        snapshot_entries=_int(spec, "sidecar.limits.snapshotEntries", 1),
        snapshot_bytes=_int(spec, "sidecar.limits.snapshotBytes", 1),
        storage_size=str(_get(spec, "storage.size") or "1Gi"),
        storage_class=_get(spec, "storage.storageClassName") or None,
        tls_secret=tls_secret,
        pdb_max_unavailable=pdb,
    )
