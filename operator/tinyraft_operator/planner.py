"""The membership planner: `plan(spec, observed) -> Action`, a pure function.

Given what the operator wants (PlanSpec) and what it saw this round (Observed), it
returns the ONE next step. The handlers execute that step and observe again, so every
step is taken against fresh facts and a crashed operator resumes where it stopped:
nothing here depends on memory of earlier rounds.

Rules, in order of precedence:
  1. paused: do nothing.
  2. cluster ids: members that disagree about the cluster id (with each other, or with
     the one latched in status) stop all automation (ClusterIDMismatch). With no id
     latched yet, an id that members already hold is latched (never bootstrapped
     again); with none anywhere, ordinal 0 is bootstrapped, once.
  3. no leader: nothing can change; QuorumLost once a cluster id exists.
  4. a voter whose pod came back empty (wiped volume) is removed, to be added again.
  5. learners: promoted once caught up with the leader's commit; a learner beyond the
     wanted size is removed instead.
  6. scale down, highest ordinal first: leadership moves away, the member is removed,
     then the StatefulSet shrinks, then the claim of the gone pod is deleted.
  7. scale up, lowest missing ordinal first: AddLearner, then the StatefulSet grows.
  8. rolling update (pods whose template hash is old), one pod at a time, only when
     every voter is healthy and caught up: non-members, then followers, then the leader
     after handing leadership away.
Every membership change keeps enough healthy voters for a quorum of the configuration
after it; a step that would not is refused with a reason."""

from __future__ import annotations

from dataclasses import dataclass, field

CATCH_UP_LAG = 64  # entries: a member this close to the leader counts as caught up
CONTACT_TIMEOUT_S = 5.0  # a voter the leader has not heard from in this long is unhealthy


@dataclass(frozen=True)
class PlanSpec:
    name: str
    replicas: int
    paused: bool = False
    template_hash: str = ""

    def pod(self, ordinal: int) -> str:
        return f"{self.name}-{ordinal}"

    def ordinal(self, pod: str) -> int | None:
        prefix = f"{self.name}-"
        tail = pod[len(prefix) :] if pod.startswith(prefix) else ""
        return int(tail) if tail.isdigit() and str(int(tail)) == tail else None


@dataclass(frozen=True)
class PodView:
    """A pod of the StatefulSet, and what its sidecar's Admin.Status said (if it did)."""

    name: str
    ordinal: int
    ready: bool = False  # the Kubernetes Ready condition
    deleting: bool = False
    template_hash: str = ""
    reachable: bool = False
    cluster_id: str = ""
    role: str = ""
    term: int = 0
    leader_id: str = ""
    commit_index: int = 0
    applied_index: int = 0


@dataclass(frozen=True)
class MemberView:
    """A member of the Raft configuration, as the leader reports it."""

    id: str
    suffrage: str  # voter | learner
    lag: int = 0
    last_contact_s: float = 0.0  # negative: never heard from


@dataclass(frozen=True)
class Observed:
    latched_cluster_id: str = ""
    sts_replicas: int | None = None  # None: no StatefulSet yet
    pods: tuple[PodView, ...] = ()
    pvc_ordinals: frozenset[int] = frozenset()
    leader: str = ""  # pod name of the leader, "" if none is known
    leader_commit: int = 0
    members: tuple[MemberView, ...] = ()  # the leader's configuration

    def pod(self, name: str) -> PodView | None:
        for p in self.pods:
            if p.name == name:
                return p
        return None

    def member(self, name: str) -> MemberView | None:
        for m in self.members:
            if m.id == name:
                return m
        return None

    @property
    def voters(self) -> list[str]:
        return sorted(m.id for m in self.members if m.suffrage == "voter")

    @property
    def learners(self) -> list[str]:
        return sorted(m.id for m in self.members if m.suffrage == "learner")


# --- actions -----------------------------------------------------------------------

# Progressing reasons (the vocabulary).
BOOTSTRAPPING = "Bootstrapping"
SCALING_UP = "ScalingUp"
SCALING_DOWN = "ScalingDown"
PROMOTING = "PromotingLearner"
ROLLING = "RollingUpdate"
REPLACING = "ReplacingMember"


@dataclass(frozen=True)
class Action:
    reason: str = ""  # a Progressing reason, or why nothing is done
    message: str = ""

    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def changes_membership(self) -> bool:
        return False

    @property
    def acts(self) -> bool:
        """Whether executing it changes anything (Raft or Kubernetes)."""
        return True


@dataclass(frozen=True)
class Converged(Action):
    @property
    def acts(self) -> bool:
        return False


@dataclass(frozen=True)
class Wait(Action):
    """Something is in progress or blocked; look again next round."""

    refused: bool = False  # a requested change is refused for safety (Warning event)

    @property
    def acts(self) -> bool:
        return False


@dataclass(frozen=True)
class Paused(Action):
    @property
    def acts(self) -> bool:
        return False


@dataclass(frozen=True)
class Halt(Action):
    """Automation stops for this cluster: `condition` says why (ClusterIDMismatch)."""

    condition: str = ""

    @property
    def acts(self) -> bool:
        return False


@dataclass(frozen=True)
class LatchClusterID(Action):
    cluster_id: str = ""


@dataclass(frozen=True)
class Bootstrap(Action):
    pod: str = ""


@dataclass(frozen=True)
class AddLearner(Action):
    member: str = ""
    ordinal: int = 0

    @property
    def changes_membership(self) -> bool:
        return True


@dataclass(frozen=True)
class Promote(Action):
    member: str = ""

    @property
    def changes_membership(self) -> bool:
        return True


@dataclass(frozen=True)
class RemoveMember(Action):
    member: str = ""

    @property
    def changes_membership(self) -> bool:
        return True


@dataclass(frozen=True)
class TransferLeadership(Action):
    source: str = ""
    target: str = ""


@dataclass(frozen=True)
class ScaleStatefulSet(Action):
    replicas: int = 0


@dataclass(frozen=True)
class DeletePVC(Action):
    ordinal: int = 0


@dataclass(frozen=True)
class DeletePod(Action):
    pod: str = ""


# --- health --------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    healthy: frozenset[str] = field(default_factory=frozenset)  # voters and learners
    caught_up: frozenset[str] = field(default_factory=frozenset)


def quorum(voters: int) -> int:
    return voters // 2 + 1


def health(spec: PlanSpec, obs: Observed, cluster_id: str) -> Health:
    healthy, caught_up = set(), set()
    for m in obs.members:
        pod = obs.pod(m.id)
        if pod is None or pod.deleting or not pod.reachable or pod.cluster_id != cluster_id:
            continue
        if m.id != obs.leader and not 0 <= m.last_contact_s <= CONTACT_TIMEOUT_S:
            continue
        healthy.add(m.id)
        if m.lag <= CATCH_UP_LAG and pod.applied_index + CATCH_UP_LAG >= obs.leader_commit:
            caught_up.add(m.id)
    return Health(frozenset(healthy), frozenset(caught_up))


def _healthy_voters(obs: Observed, h: Health, without: str = "") -> int:
    return sum(1 for v in obs.voters if v in h.healthy and v != without)


# --- the planner ---------------------------------------------------------------------


def plan(spec: PlanSpec, obs: Observed) -> Action:
    if spec.paused:
        return Paused("Paused", "spec.paused is true: no automation")

    # 2. Cluster identity.
    ids: dict[str, list[str]] = {}
    for p in obs.pods:
        if p.reachable and p.cluster_id:
            ids.setdefault(p.cluster_id, []).append(p.name)
    latched = obs.latched_cluster_id
    foreign = {cid: names for cid, names in ids.items() if cid != latched} if latched else {}
    if (latched and foreign) or (not latched and len(ids) > 1):
        shown = "; ".join(f"{cid}: {', '.join(sorted(n))}" for cid, n in sorted(ids.items()))
        expected = f"status.clusterID is {latched}; " if latched else ""
        return Halt(
            "ClusterIDMismatch",
            f"members report different cluster ids ({expected}{shown}); all automation "
            "is stopped for this cluster until a person resolves it",
            condition="ClusterIDMismatch",
        )
    if not latched:
        if ids:
            (cid,) = ids
            return LatchClusterID(BOOTSTRAPPING, f"members already hold cluster {cid}", cid)
        if obs.sts_replicas is None:
            return Wait(BOOTSTRAPPING, "waiting for the StatefulSet to be created")
        first = obs.pod(spec.pod(0))
        if first is None or not first.reachable:
            return Wait(BOOTSTRAPPING, f"waiting for {spec.pod(0)} to answer on its admin port")
        return Bootstrap(BOOTSTRAPPING, f"bootstrapping a new cluster on {first.name}", first.name)

    # 3. A leader is needed for anything else.
    if not obs.leader or not obs.members:
        known = sorted(n for n in ids.get(latched, []))
        who = f"members {', '.join(known)} know the cluster" if known else "no member knows it"
        return Wait("QuorumLost", f"no leader for cluster {latched}: {who}")

    h = health(spec, obs, latched)
    voters, learners = obs.voters, obs.learners
    target = spec.replicas
    sts = obs.sts_replicas if obs.sts_replicas is not None else 0

    # 4. A voter whose pod lost its data: remove it, it will be added again as a learner.
    for v in voters:
        pod = obs.pod(v)
        if pod is None or not pod.reachable or pod.cluster_id or pod.deleting:
            continue
        remaining = [x for x in voters if x != v]
        if not remaining:
            return Wait(REPLACING, f"{v} lost its data and is the only voter", refused=True)
        if _healthy_voters(obs, h, without=v) < quorum(len(remaining)):
            return Wait(
                REPLACING,
                f"{v} lost its data, but removing it now would leave fewer than "
                f"{quorum(len(remaining))} healthy voters",
                refused=True,
            )
        if v == obs.leader:  # cannot happen (a leader has data); be safe anyway
            continue
        return RemoveMember(REPLACING, f"{v} came back with an empty volume: replacing it", v)

    # 5. Learners.
    for learner in learners:
        ordinal = spec.ordinal(learner)
        if ordinal is None or ordinal >= target:
            return RemoveMember(SCALING_DOWN, f"learner {learner} is beyond {target} replicas",
                                learner)  # fmt: skip
        pod = obs.pod(learner)
        if ordinal >= sts:
            return ScaleStatefulSet(SCALING_UP, f"starting the pod of learner {learner}",
                                    ordinal + 1)  # fmt: skip
        if pod is None or not pod.reachable or pod.cluster_id != latched:
            return Wait(PROMOTING, f"waiting for learner {learner} to start and join")
        if pod.applied_index < obs.leader_commit or learner not in h.healthy:
            return Wait(
                PROMOTING,
                f"learner {learner} is catching up ({pod.applied_index}/{obs.leader_commit})",
            )
        if _healthy_voters(obs, h) + 1 < quorum(len(voters) + 1):
            return Wait(
                PROMOTING,
                f"not promoting {learner}: with {len(voters) + 1} voters, too few would be "
                "healthy for a quorum",
                refused=True,
            )
        return Promote(PROMOTING, f"learner {learner} caught up: promoting it to voter",
                       learner)  # fmt: skip

    # 6. Scale down, the highest ordinal first: remove it from the configuration, then
    # shrink the StatefulSet past it, then delete its claim once its pod is gone.
    if sts > target and spec.pod(sts - 1) not in voters:
        return ScaleStatefulSet(SCALING_DOWN, f"shrinking the StatefulSet to {sts - 1}", sts - 1)
    for ordinal in sorted(obs.pvc_ordinals):
        name = spec.pod(ordinal)
        if ordinal >= sts and obs.pod(name) is None and name not in voters:
            return DeletePVC(SCALING_DOWN, f"deleting the volume of removed member {name}",
                             ordinal)  # fmt: skip
    beyond = [v for v in voters if (o := spec.ordinal(v)) is None or o >= target]
    if beyond:
        victim = max(beyond, key=lambda v: (spec.ordinal(v) is None, spec.ordinal(v) or 0))
        remaining = [v for v in voters if v != victim]
        if _healthy_voters(obs, h, without=victim) < quorum(len(remaining)):
            return Wait(
                SCALING_DOWN,
                f"refusing to remove {victim}: the {len(remaining)} voters left would have "
                f"fewer than {quorum(len(remaining))} healthy members",
                refused=True,
            )
        if victim == obs.leader:
            candidates = sorted(v for v in remaining if v in h.caught_up)
            if not candidates:
                return Wait(SCALING_DOWN, f"no caught-up voter to hand leadership to from {victim}")
            return TransferLeadership(
                SCALING_DOWN, f"moving leadership away from {victim} before removing it",
                victim, candidates[0],
            )  # fmt: skip
        return RemoveMember(SCALING_DOWN, f"removing {victim} to scale down to {target}", victim)

    # 7. Scale up: the lowest ordinal that is not a member.
    for ordinal in range(target):
        name = spec.pod(ordinal)
        if name in voters:
            continue
        pod = obs.pod(name)
        if pod is not None and pod.reachable and pod.cluster_id not in ("", latched):
            continue  # cannot happen past the identity check above
        if pod is not None and pod.deleting:
            return Wait(SCALING_UP, f"waiting for the old pod {name} to go")
        return AddLearner(SCALING_UP, f"adding {name} as a learner", name, ordinal)
    if sts < target:  # every wanted member exists; only pods are missing
        return ScaleStatefulSet(SCALING_UP, f"growing the StatefulSet to {target}", target)

    # 8. Rolling update.
    if spec.template_hash:
        stale = [p for p in obs.pods if p.template_hash != spec.template_hash and not p.deleting]
        if stale:
            return _roll(spec, obs, h, stale)

    unhealthy = sorted(v for v in voters if v not in h.healthy)
    if unhealthy:
        return Wait("Degraded", f"members not healthy: {', '.join(unhealthy)}")
    return Converged("Converged", f"{len(voters)} voters, leader {obs.leader}")


def _roll(spec: PlanSpec, obs: Observed, h: Health, stale: list[PodView]) -> Action:
    if any(p.deleting for p in obs.pods):
        return Wait(ROLLING, "waiting for a deleted pod to go")
    members = {m.id for m in obs.members}
    # Never take a pod down while any voter is unhealthy or behind, or a pod is not
    # ready: the pod replaced last must be back and caught up before the next.
    not_ok = sorted(
        {v for v in obs.voters if v not in h.caught_up}
        | {p.name for p in obs.pods if not p.ready}
    )  # fmt: skip
    outsiders = [p for p in stale if p.name not in members]
    if outsiders:
        return DeletePod(ROLLING, f"restarting {outsiders[0].name} with the new template",
                         outsiders[0].name)  # fmt: skip
    if not_ok:
        return Wait(ROLLING, f"waiting for {', '.join(not_ok)} to be healthy and caught up")
    followers = sorted(
        (p for p in stale if p.name != obs.leader), key=lambda p: p.ordinal, reverse=True
    )
    if followers:
        return DeletePod(ROLLING, f"restarting {followers[0].name} with the new template",
                         followers[0].name)  # fmt: skip
    leader = stale[0]
    others = sorted(v for v in obs.voters if v != leader.name and v in h.caught_up)
    if others:
        return TransferLeadership(
            ROLLING, f"moving leadership away from {leader.name} before restarting it",
            leader.name, others[0],
        )  # fmt: skip
    if len(obs.voters) == 1:
        return DeletePod(ROLLING, f"restarting {leader.name}, the only member (brief outage)",
                         leader.name)  # fmt: skip
    return Wait(ROLLING, f"no caught-up voter to take over from {leader.name}")
