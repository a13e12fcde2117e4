"""One reconcile of one RaftCluster: make sure the owned objects exist, observe the
pods and their sidecars, ask the planner for the next step, take it, publish status.

At most one step per reconcile, under a per-cluster lock (kopf runs the timer and the
change handlers concurrently)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc
from tinyraft_operator import builders, metrics
from tinyraft_operator.kube import Kube, KubeError, path
from tinyraft_operator.planner import (
    CATCH_UP_LAG,
    Action,
    AddLearner,
    Bootstrap,
    Converged,
    DeletePod,
    DeletePVC,
    Halt,
    Health,
    LatchClusterID,
    MemberView,
    Observed,
    Paused,
    PlanSpec,
    PodView,
    Promote,
    RemoveMember,
    ScaleStatefulSet,
    TransferLeadership,
    Wait,
    health,
    plan,
    quorum,
)
from tinyraft_operator.settings import Settings
from tinyraft_operator.spec import ClusterSpec, SpecError, parse

log = logging.getLogger("tinyraft_operator")

STATUS_TIMEOUT_S = 2.0
# Owned objects (Services, PDB, StatefulSet) are re-checked on spec changes and every
# this many reconcile intervals (30 s at the default 5 s): not every round, as each
# check is several API calls per object.
ENSURE_EVERY_INTERVALS = 6
SLOW_RECONCILE_S = 2.0
PHASES_S: dict[str, float] = {}  # the last observation's timings, for slow-reconcile logs

EventSink = Callable[[Mapping[str, Any], str, str, str], None]  # (body, type, reason, message)


@dataclass
class ClusterMemory:
    """What the operator keeps between reconciles of one cluster: only conveniences
    (event de-duplication, convergence timing); correctness never depends on it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_refusal: str = ""
    warned_even: int = -1
    unconverged_since: float | None = None
    phase: str = ""
    ensured_generation: int = -1
    ensured_at: float = 0.0


@dataclass
class Runtime:
    settings: Settings
    kube: Kube
    emit: EventSink
    clusters: dict[str, ClusterMemory] = field(default_factory=dict)
    channels: dict[tuple[str, str], grpc.aio.Channel] = field(default_factory=dict)

    def memory(self, key: str) -> ClusterMemory:
        return self.clusters.setdefault(key, ClusterMemory())

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()
        self.channels.clear()


# --- gRPC to the sidecars -------------------------------------------------------------


async def _credentials(rt: Runtime, spec: ClusterSpec) -> grpc.ChannelCredentials | None:
    if not spec.tls_secret:
        return None
    secret = await rt.kube.get(path("secrets", spec.namespace, spec.tls_secret))
    data = (secret or {}).get("data") or {}
    import base64

    def field_(key: str) -> bytes:
        if key not in data:
            raise SpecError(f"spec.tls.secretName: secret {spec.tls_secret} has no {key}")
        return base64.b64decode(data[key])

    return grpc.ssl_channel_credentials(field_("ca.crt"), field_("tls.key"), field_("tls.crt"))


async def _admin(rt: Runtime, spec: ClusterSpec, address: str) -> admin_pb2_grpc.AdminStub:
    key = (spec.tls_secret or "", address)
    channel = rt.channels.get(key)
    if channel is None:
        creds = await _credentials(rt, spec)
        channel = (
            grpc.aio.secure_channel(address, creds)
            if creds is not None
            else grpc.aio.insecure_channel(address)
        )
        rt.channels[key] = channel
    return admin_pb2_grpc.AdminStub(channel)


def _address(rt: Runtime, spec: ClusterSpec, pod: str) -> str:
    ordinal = int(pod.rsplit("-", 1)[1])
    return rt.settings.resolve(spec.pod_address(ordinal))


async def _status(rt: Runtime, spec: ClusterSpec, pod: str) -> apb.AdminStatusResponse | None:
    try:
        stub = await _admin(rt, spec, _address(rt, spec, pod))
        return await stub.Status(apb.AdminStatusRequest(), timeout=STATUS_TIMEOUT_S)
    except grpc.aio.AioRpcError:
        return None


# --- observation ------------------------------------------------------------------


@dataclass
class Observation:
    observed: Observed
    statuses: dict[str, apb.AdminStatusResponse]
    leader_status: apb.AdminStatusResponse | None
    sts: dict[str, Any] | None
    ready_pods: int


def _ready(pod: Mapping[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


async def observe(
    rt: Runtime, spec: ClusterSpec, latched: str, fetch_sts: bool = True,
    sts: dict[str, Any] | None = None,
) -> Observation:  # fmt: skip
    ns = spec.namespace
    t0 = time.monotonic()
    pods, pvcs = await asyncio.gather(
        rt.kube.list(path("pods", ns), builders.selector_labels(spec)),
        rt.kube.list(path("pvcs", ns), {}),
    )
    if fetch_sts:
        sts = await rt.kube.get(path("statefulsets", ns, spec.name))
    t1 = time.monotonic()
    plan_spec = PlanSpec(spec.name, spec.replicas)
    ordinals: dict[str, int] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        ordinal = plan_spec.ordinal(name)
        if ordinal is not None:
            ordinals[name] = ordinal
    names = sorted(ordinals, key=ordinals.__getitem__)
    answers = await asyncio.gather(*(_status(rt, spec, n) for n in names))
    statuses = {n: s for n, s in zip(names, answers, strict=True) if s is not None}

    leader_name, leader_term = "", -1
    for name, answer in statuses.items():
        ours = not latched or answer.cluster_id == latched
        if answer.role == "leader" and ours and answer.term > leader_term:
            leader_name, leader_term = name, answer.term
    leader_status: apb.AdminStatusResponse | None = None
    if leader_name:
        # Asked again after every pod answered: a member that got the cluster id from
        # an AddLearner is then in the configuration we read.
        leader_status = await _status(rt, spec, leader_name) or statuses[leader_name]
        if leader_status is None or leader_status.role != "leader":
            leader_name, leader_status = "", None
    members: tuple[MemberView, ...] = ()
    if leader_status is not None:
        members = tuple(
            MemberView(m.member_id, m.suffrage, int(m.lag), float(m.last_contact_s))
            for m in leader_status.members
        )
    views = []
    for pod in pods:
        name = pod["metadata"]["name"]
        if name not in ordinals:
            continue
        s = statuses.get(name)
        annotations = pod["metadata"].get("annotations") or {}
        views.append(
            PodView(
                name=name,
                ordinal=ordinals[name],
                ready=_ready(pod),
                deleting=bool(pod["metadata"].get("deletionTimestamp")),
                template_hash=annotations.get(builders.HASH_ANNOTATION, ""),
                reachable=s is not None,
                cluster_id=s.cluster_id if s else "",
                role=s.role if s else "",
                term=s.term if s else 0,
                leader_id=s.leader_id if s else "",
                commit_index=s.commit_index if s else 0,
                applied_index=s.applied_index if s else 0,
            )
        )
    PHASES_S["kubernetes"] = t1 - t0
    PHASES_S["sidecars"] = time.monotonic() - t1
    claim = re.compile(rf"{re.escape(builders.DATA_VOLUME)}-{re.escape(spec.name)}-(\d+)")
    pvc_ordinals = frozenset(
        int(m.group(1))
        for p in pvcs
        if (m := claim.fullmatch(p["metadata"]["name"])) and str(int(m.group(1))) == m.group(1)
    )
    observed = Observed(
        latched_cluster_id=latched,
        sts_replicas=None if sts is None else int(sts.get("spec", {}).get("replicas") or 0),
        pods=tuple(sorted(views, key=lambda v: v.ordinal)),
        pvc_ordinals=pvc_ordinals,
        leader=leader_name,
        leader_commit=statuses[leader_name].commit_index if leader_name else 0,
        members=members,
    )
    return Observation(
        observed, statuses, leader_status, sts, sum(1 for v in views if v.ready and not v.deleting)
    )


# --- owned objects -------------------------------------------------------------------


def _differs(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether any field we set differs (fields the API server defaults are ignored)."""
    for key, want in desired.items():
        have = existing.get(key)
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            if _differs(have, want):
                return True
        elif have != want:
            return True
    return False


# Spec fields owned whole: a label someone added to a selector makes it select no pod
# (or other pods), and neither _differs nor a merge patch sees or removes an extra key.
_OWNED_WHOLE = ("selector",)


async def _ensure(rt: Runtime, kind: str, spec: ClusterSpec, desired: dict[str, Any]) -> None:
    url = path(kind, spec.namespace, desired["metadata"]["name"])
    existing = await rt.kube.get(url)
    if existing is None:
        try:
            await rt.kube.create(path(kind, spec.namespace), desired)
        except KubeError as exc:
            if exc.status != 409:
                raise
        return
    have, want = existing.get("spec") or {}, desired["spec"]
    if _differs(have, want):
        await rt.kube.patch(url, {"spec": want})
    for key in _OWNED_WHOLE:
        if key in want and have.get(key) != want[key]:
            await rt.kube.replace_at(url, f"/spec/{key}", want[key])


async def ensure_objects(rt: Runtime, spec: ClusterSpec, sts: dict[str, Any] | None,
                         latched: str) -> None:  # fmt: skip
    await _ensure(rt, "services", spec, builders.peer_service(spec))
    await _ensure(rt, "services", spec, builders.client_service(spec))
    await _ensure(rt, "pdbs", spec, builders.pod_disruption_budget(spec))
    url = path("statefulsets", spec.namespace, spec.name)
    if sts is None:
        # A new cluster starts every pod at once (nothing to protect yet; they all wait
        # to be bootstrapped or added). An existing cluster whose StatefulSet went
        # missing gets it back at size 1 and grows member by member.
        replicas = spec.replicas if not latched else 1
        desired = builders.stateful_set(spec, rt.settings, replicas)
        try:
            await rt.kube.create(path("statefulsets", spec.namespace), desired)
        except KubeError as exc:
            if exc.status != 409:
                raise
        return
    desired = builders.stateful_set(spec, rt.settings, int(sts["spec"].get("replicas") or 0))
    template = desired["spec"]["template"]
    have = sts.get("spec", {}).get("template") or {}
    if _template_key(have) != _template_key(template):
        # OnDelete: this changes no running pod; the planner rolls them one by one.
        await rt.kube.replace_at(url, "/spec/template", template)


def _template_key(template: Mapping[str, Any]) -> tuple[str, str]:
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    join = ""
    for c in (template.get("spec") or {}).get("containers") or []:
        if c.get("name") == "tinyraft":
            join = next((e.get("value", "") for e in c.get("env", [])
                         if e.get("name") == "RAFT_JOIN"), "")  # fmt: skip
    return annotations.get(builders.HASH_ANNOTATION, ""), join


# --- status ---------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(old: list[Mapping[str, Any]], type_: str, status: bool, reason: str,
               message: str, generation: int) -> dict[str, Any]:  # fmt: skip
    value = "True" if status else "False"
    previous = next((c for c in old if c.get("type") == type_), None)
    since = previous.get("lastTransitionTime") if previous else None
    if previous is None or previous.get("status") != value or not since:
        since = _now()
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def build_status(spec: ClusterSpec, obs: Observation | None, action: Action, latched: str,
                 old: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    conditions_old = list(old.get("conditions") or [])
    gen = spec.generation
    o = obs.observed if obs else Observed(latched_cluster_id=latched)
    h = health(PlanSpec(spec.name, spec.replicas), o, latched) if latched else Health()
    voters = o.voters
    healthy_voters = sum(1 for v in voters if v in h.healthy)
    has_quorum = bool(o.leader) and bool(voters) and healthy_voters >= quorum(len(voters))
    mismatch = isinstance(action, Halt) and action.condition == "ClusterIDMismatch"
    quorum_lost = bool(latched) and not has_quorum and not mismatch

    members: list[dict[str, Any]] = []
    config = {m.id: m for m in o.members}
    for name in sorted({*config, *(p.name for p in o.pods)},
                       key=lambda n: (len(n), n)):  # fmt: skip
        m = config.get(name)
        pod = o.pod(name)
        role = "leader" if name == o.leader else (pod.role if pod and pod.reachable else "unknown")
        if m is not None and m.suffrage == "learner":
            role = "learner"
        members.append(
            {
                "name": name,
                "id": name if m is not None or (pod and pod.cluster_id) else "",
                "role": role if m is not None else ("joining" if pod and pod.reachable
                                                     else "unknown"),
                "suffrage": m.suffrage if m is not None else "none",
                "healthy": name in h.healthy,
                "lag": int(m.lag) if m is not None else 0,
            }
        )  # fmt: skip
    unhealthy = sorted(
        {m["name"] for m in members if m["suffrage"] != "none" and not m["healthy"]}
        | {p.name for p in o.pods if not p.ready}
    )  # fmt: skip

    progressing = action.acts or (isinstance(action, Wait) and action.reason in (
        "Bootstrapping", "ScalingUp", "ScalingDown", "PromotingLearner", "RollingUpdate",
        "ReplacingMember"))  # fmt: skip
    if isinstance(action, Paused):
        phase = "Paused"
    elif mismatch:
        phase = "ClusterIDMismatch"
    elif not latched:
        phase = "Bootstrapping" if obs is not None else "Pending"
    elif quorum_lost:
        phase = "QuorumLost"
    elif progressing:
        phase = "Progressing"
    elif unhealthy:
        phase = "Degraded"
    else:
        phase = "Running"

    leader_status = obs.leader_status if obs else None
    conditions = [
        _condition(conditions_old, "Available", has_quorum,
                   "QuorumHolds" if has_quorum else "NoQuorum",
                   f"leader {o.leader}, {healthy_voters}/{len(voters)} voters healthy"
                   if has_quorum else "no leader with a healthy quorum", gen),
        _condition(conditions_old, "Progressing", progressing,
                   action.reason if progressing else
                   ("Paused" if isinstance(action, Paused) else "Idle"),
                   action.message, gen),
        _condition(conditions_old, "Degraded", bool(unhealthy),
                   "MembersUnhealthy" if unhealthy else "AllHealthy",
                   f"not healthy: {', '.join(unhealthy)}" if unhealthy else "", gen),
        _condition(conditions_old, "QuorumLost", quorum_lost,
                   "NoLeader" if quorum_lost else "QuorumHolds",
                   action.message if quorum_lost else "", gen),
        _condition(conditions_old, "ClusterIDMismatch", mismatch,
                   "ClusterIDMismatch" if mismatch else "ClusterIDsAgree",
                   action.message if mismatch else "", gen),
    ]  # fmt: skip
    return {
        "observedGeneration": gen,
        "phase": phase,
        "clusterID": latched or None,
        "leader": o.leader,
        "term": int(leader_status.term) if leader_status else int(old.get("term") or 0),
        "commitIndex": int(leader_status.commit_index)
        if leader_status
        else int(old.get("commitIndex") or 0),
        "readyReplicas": obs.ready_pods if obs else 0,
        "currentAction": f"{action.kind}: {action.message}"[:500],
        "members": members,
        "conditions": conditions,
    }


# --- executing one action --------------------------------------------------------------

_CHANGE_KIND = {
    "Bootstrap": "bootstrap",
    "AddLearner": "add_learner",
    "Promote": "promote",
    "RemoveMember": "remove",
    "TransferLeadership": "transfer_leadership",
}


async def execute(rt: Runtime, spec: ClusterSpec, action: Action, obs: Observed,
                  latch: Callable[[str], Any]) -> str:  # fmt: skip
    """Carry out one action; returns the event message (or "" for no event)."""
    ns = spec.namespace
    rpc = rt.settings.rpc_timeout_s
    leader = obs.leader
    match action:
        case LatchClusterID(cluster_id=cid):
            await latch(cid)
            return f"Latched cluster id {cid}, which the members already hold"
        case Bootstrap(pod=pod):
            stub = await _admin(rt, spec, _address(rt, spec, pod))
            reply = await stub.Bootstrap(apb.BootstrapRequest(), timeout=rpc)
            await latch(reply.cluster_id)  # before anything else can happen
            return f"Bootstrapped cluster {reply.cluster_id} on {pod}"
        case AddLearner(member=member):
            stub = await _admin(rt, spec, _address(rt, spec, leader))
            address = _address(rt, spec, member)
            await stub.AddLearner(
                apb.AddLearnerRequest(member_id=member, address=address), timeout=rpc
            )
            return f"Added {member} ({address}) as a learner"
        case Promote(member=member):
            stub = await _admin(rt, spec, _address(rt, spec, leader))
            await stub.Promote(apb.MemberRequest(member_id=member), timeout=rpc)
            return f"Promoted {member} to voter"
        case RemoveMember(member=member):
            stub = await _admin(rt, spec, _address(rt, spec, leader))
            await stub.RemoveMember(apb.MemberRequest(member_id=member), timeout=rpc)
            return f"Removed member {member} ({action.message})"
        case TransferLeadership(source=source, target=target):
            stub = await _admin(rt, spec, _address(rt, spec, source))
            await stub.TransferLeadership(
                apb.TransferLeadershipRequest(member_id=target), timeout=rpc
            )
            return f"Moved leadership from {source} to {target} ({action.message})"
        case ScaleStatefulSet(replicas=n):
            await rt.kube.patch(path("statefulsets", ns, spec.name), {"spec": {"replicas": n}})
            return f"Scaled the StatefulSet to {n}"
        case DeletePVC(ordinal=o):
            await rt.kube.delete(path("pvcs", ns, builders.pvc_name(spec, o)))
            return f"Deleted volume claim {builders.pvc_name(spec, o)} of a removed member"
        case DeletePod(pod=pod):
            await rt.kube.delete(path("pods", ns, pod))
            return f"Deleted pod {pod} ({action.message})"
    return ""


# --- the reconcile --------------------------------------------------------------------


async def reconcile(rt: Runtime, namespace: str, name: str) -> str:
    """Returns the result label for metrics."""
    url = path("raftclusters", namespace, name)
    memory = rt.memory(f"{namespace}/{name}")
    async with memory.lock:
        body = await rt.kube.get(url)  # fresh, under the lock: the latched id matters
        if body is None or body["metadata"].get("deletionTimestamp"):
            return "gone"
        return await _reconcile_locked(rt, body, memory)


async def _reconcile_locked(rt: Runtime, body: dict[str, Any], memory: ClusterMemory) -> str:
    meta = body["metadata"]
    key = f"{meta.get('namespace')}/{meta['name']}"
    status_url = path("raftclusters", meta.get("namespace") or "default", meta["name"], "status")
    old_status = body.get("status") or {}
    latched = str(old_status.get("clusterID") or "")
    try:
        spec = parse(body)
    except SpecError as err:
        _refuse(rt, body, memory, "InvalidSpec", str(err))
        await rt.kube.patch(status_url, {"status": {
            "phase": "Invalid", "observedGeneration": meta.get("generation") or 0,
            "conditions": [_condition(old_status.get("conditions") or [], "Progressing",
                                      False, "InvalidSpec", str(err),
                                      int(meta.get("generation") or 0))]}})  # fmt: skip
        return "invalid"
    if spec.replicas % 2 == 0 and memory.warned_even != spec.generation:
        memory.warned_even = spec.generation
        rt.emit(body, "Warning", "EvenReplicas",
                f"{spec.replicas} replicas tolerate no more failures than "
                f"{spec.replicas - 1}: an odd count is recommended")  # fmt: skip

    async def latch(cluster_id: str) -> None:
        nonlocal latched
        await rt.kube.patch(status_url, {"status": {"clusterID": cluster_id}})
        latched = cluster_id

    obs: Observation | None = None
    action: Action
    result = "error"
    started = time.monotonic()
    try:
        sts = await rt.kube.get(path("statefulsets", spec.namespace, spec.name))
        if sts is None and not spec.paused:  # a new cluster: its objects first
            await ensure_objects(rt, spec, sts, latched)
            sts = await rt.kube.get(path("statefulsets", spec.namespace, spec.name))
            memory.ensured_generation, memory.ensured_at = spec.generation, time.monotonic()
        obs = await observe(rt, spec, latched, fetch_sts=False, sts=sts)
        plan_spec = PlanSpec(
            spec.name, spec.replicas, spec.paused,
            builders.desired_template_hash(spec, rt.settings),
        )  # fmt: skip
        action = plan(plan_spec, obs.observed)
        # Keep the owned objects in line with the spec (not while paused or halted).
        every_s = ENSURE_EVERY_INTERVALS * rt.settings.interval_s
        due = time.monotonic() - memory.ensured_at > every_s
        if not isinstance(action, (Paused, Halt)) and (
            due or memory.ensured_generation != spec.generation
        ):
            await ensure_objects(rt, spec, sts, latched)
            memory.ensured_generation, memory.ensured_at = spec.generation, time.monotonic()
        result = await _act(rt, body, spec, memory, action, obs, latch, key)
    except Exception as err:  # report, and try again on the next round
        log.warning("cluster=%s result=error error=%r", key, err, extra={"cluster": key})
        action = Wait("Error", f"reconcile failed: {err}")
        result = "error"
    status = build_status(spec, obs, action, latched, old_status)
    try:
        await rt.kube.patch(status_url, {"status": status})
    except KubeError as err:
        log.warning("cluster=%s status patch failed: %s", key, err)
    elapsed = time.monotonic() - started
    log.log(
        logging.INFO if elapsed > SLOW_RECONCILE_S else logging.DEBUG,
        "cluster=%s reconcile result=%s phase=%s took %.2fs (observing kubernetes %.2fs, "
        "sidecars %.2fs)",
        key, result, status["phase"], elapsed, PHASES_S.get("kubernetes", 0),
        PHASES_S.get("sidecars", 0),
        extra={"cluster": key, "result": result, "seconds": round(elapsed, 3)},
    )  # fmt: skip
    if memory.phase != status["phase"]:
        if memory.phase:
            metrics.CLUSTERS.labels(memory.phase).dec()
        metrics.CLUSTERS.labels(status["phase"]).inc()
        memory.phase = status["phase"]
    return result


def _refuse(rt: Runtime, body: Mapping[str, Any], memory: ClusterMemory, reason: str,
            message: str) -> None:  # fmt: skip
    if memory.last_refusal != message:
        memory.last_refusal = message
        rt.emit(body, "Warning", reason, message)
        log.warning("cluster=%s refused reason=%s %s", body["metadata"]["name"], reason, message)


async def _act(rt: Runtime, body: dict[str, Any], spec: ClusterSpec, memory: ClusterMemory,
               action: Action, obs: Observation, latch: Callable[[str], Any],
               key: str) -> str:  # fmt: skip
    now = time.monotonic()
    if isinstance(action, Converged):
        memory.last_refusal = ""
        if memory.unconverged_since is not None:
            metrics.CONVERGE_SECONDS.observe(now - memory.unconverged_since)
            memory.unconverged_since = None
        return "converged"
    if memory.unconverged_since is None and not isinstance(action, Paused):
        memory.unconverged_since = now
    if isinstance(action, Paused):
        return "paused"
    if isinstance(action, Halt):
        _refuse(rt, body, memory, action.condition, action.message)
        return "halted"
    if isinstance(action, Wait):
        if action.refused:
            _refuse(rt, body, memory, "Refused", action.message)
        log.info("cluster=%s action=Wait reason=%s %s", key, action.reason, action.message,
                 extra={"cluster": key, "action": "Wait"})  # fmt: skip
        return "waiting"
    log.info("cluster=%s action=%s starting: %s", key, action.kind, action.message,
             extra={"cluster": key, "action": action.kind})  # fmt: skip
    try:
        message = await execute(rt, spec, action, obs.observed, latch)
    except grpc.aio.AioRpcError as err:
        text = f"{action.kind} failed: {err.code().name}: {err.details()}"
        log.warning("cluster=%s action=%s failed: %s", key, action.kind, text)
        if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
            _refuse(rt, body, memory, "Refused", text)
        return "error"
    memory.last_refusal = ""
    kind = _CHANGE_KIND.get(action.kind)
    if kind:
        metrics.MEMBERSHIP_CHANGES.labels(kind).inc()
    if message:
        reason = "ReplacingMember" if action.reason == "ReplacingMember" else action.kind
        rt.emit(body, "Normal", reason, message)
    log.info("cluster=%s action=%s done: %s", key, action.kind, message,
             extra={"cluster": key, "action": action.kind})  # fmt: skip
    if rt.settings.crash_after == action.kind:
        log.error("TINYRAFT_OPERATOR_TEST_CRASH_AFTER=%s: exiting now", action.kind)
        os._exit(17)
    return "acted"


__all__ = ["CATCH_UP_LAG", "Runtime", "reconcile"]
