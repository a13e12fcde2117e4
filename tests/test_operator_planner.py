"""The planner as a pure function: (spec, observed state) -> the one next action.

Examples walk each behaviour of the issue step by step; hypothesis generates arbitrary
observed states (crashed pods, wiped volumes, half-done scalings, foreign cluster ids,
stale templates) and checks the invariants: never below quorum, never two membership
changes at once, never a second bootstrap once a cluster id exists."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyraft_operator.planner import (
    AddLearner,
    Bootstrap,
    Converged,
    DeletePod,
    DeletePVC,
    Halt,
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

CID = "c1"


def pod(i: int, **kw: object) -> PodView:
    base: dict[str, object] = dict(
        name=f"kv-{i}", ordinal=i, ready=True, reachable=True, cluster_id=CID,
        template_hash="h1", applied_index=100, commit_index=100, term=2,
    )  # fmt: skip
    base.update(kw)
    return PodView(**base)  # type: ignore[arg-type]


def cluster(voters: int, learners: tuple[int, ...] = (), leader: int = 0, sts: int | None = None,
            pods: int | None = None, **kw: object) -> Observed:  # fmt: skip
    n_pods = voters + len(learners) if pods is None else pods
    members = tuple(MemberView(f"kv-{i}", "voter", 0, 0.1) for i in range(voters)) + tuple(
        MemberView(f"kv-{i}", "learner", 0, 0.1) for i in learners
    )
    base: dict[str, object] = dict(
        latched_cluster_id=CID,
        sts_replicas=n_pods if sts is None else sts,
        pods=tuple(pod(i, role="leader" if i == leader else "follower") for i in range(n_pods)),
        pvc_ordinals=frozenset(range(n_pods)),
        leader=f"kv-{leader}",
        leader_commit=100,
        members=members,
    )
    base.update(kw)
    return Observed(**base)  # type: ignore[arg-type]


def spec(replicas: int, **kw: object) -> PlanSpec:
    return PlanSpec("kv", replicas, template_hash="h1", **kw)  # type: ignore[arg-type]


def with_pod(obs: Observed, i: int, **kw: object) -> Observed:
    return replace(obs, pods=tuple(replace(p, **kw) if p.ordinal == i else p for p in obs.pods))


# --- examples -------------------------------------------------------------------------


def test_a_new_cluster_is_bootstrapped_on_ordinal_zero_once() -> None:
    fresh = Observed(sts_replicas=3, pods=tuple(pod(i, cluster_id="") for i in range(3)))
    assert plan(spec(3), fresh) == Bootstrap("Bootstrapping", "bootstrapping a new cluster on kv-0",
                                             "kv-0")  # fmt: skip
    # The first pod not answering yet: wait, never bootstrap another ordinal.
    assert isinstance(plan(spec(3), with_pod(fresh, 0, reachable=False)), Wait)
    # After the bootstrap, whether or not the latch was written: never again.
    booted = with_pod(fresh, 0, cluster_id=CID)
    assert plan(spec(3), booted) == LatchClusterID("Bootstrapping",
                                                   f"members already hold cluster {CID}", CID)  # fmt: skip
    latched = replace(booted, latched_cluster_id=CID)
    assert isinstance(plan(spec(3), latched), Wait)  # no leader seen yet


def test_a_latched_cluster_that_nobody_knows_is_quorum_lost_not_rebootstrapped() -> None:
    obs = Observed(latched_cluster_id=CID, sts_replicas=3,
                   pods=tuple(pod(i, cluster_id="") for i in range(3)))  # fmt: skip
    action = plan(spec(3), obs)
    assert isinstance(action, Wait) and action.reason == "QuorumLost"


def test_learners_are_promoted_one_at_a_time_when_caught_up() -> None:
    obs = cluster(1, learners=(1, 2), pods=3)
    obs = with_pod(obs, 1, applied_index=40)
    action = plan(spec(3), obs)
    assert isinstance(action, Wait) and "catching up" in action.message
    action = plan(spec(3), with_pod(obs, 1, applied_index=100))
    assert action == Promote("PromotingLearner", "learner kv-1 caught up: promoting it to voter",
                             "kv-1")  # fmt: skip


def test_scale_up_adds_a_learner_then_grows_the_statefulset() -> None:
    obs = cluster(3)
    assert plan(spec(5), obs) == AddLearner("ScalingUp", "adding kv-3 as a learner", "kv-3", 3)
    added = cluster(3, learners=(3,), pods=3, sts=3)
    assert plan(spec(5), added) == ScaleStatefulSet("ScalingUp", "starting the pod of learner kv-3",
                                                    4)  # fmt: skip


def test_scale_up_deletes_the_stale_volume_of_a_removed_member_first() -> None:
    obs = replace(cluster(3), pvc_ordinals=frozenset({0, 1, 2, 3}))
    assert plan(spec(5), obs) == DeletePVC("ScalingDown", "deleting the volume of removed member kv-3",
                                           3)  # fmt: skip


def test_scale_down_removes_the_highest_ordinal_then_shrinks_then_deletes_the_claim() -> None:
    obs = cluster(5)
    assert plan(spec(3), obs) == RemoveMember(
        "ScalingDown", "removing kv-4 to scale down to 3", "kv-4"
    )
    after_remove = replace(cluster(4, pods=5), pvc_ordinals=frozenset(range(5)))
    assert plan(spec(3), after_remove) == ScaleStatefulSet(
        "ScalingDown", "shrinking the StatefulSet to 4", 4)  # fmt: skip
    shrunk = replace(cluster(4, pods=4), pvc_ordinals=frozenset(range(5)))
    assert isinstance(plan(spec(3), shrunk), DeletePVC)


def test_scale_down_moves_leadership_away_first() -> None:
    obs = cluster(3, leader=2)
    action = plan(spec(1), obs)
    assert isinstance(action, TransferLeadership) and action.source == "kv-2"
    assert action.target in ("kv-0", "kv-1")


def test_scale_down_is_refused_when_it_would_lose_quorum() -> None:
    obs = with_pod(cluster(3), 1, reachable=False)  # kv-1 down: 2 of 3 healthy
    action = plan(spec(1), obs)
    assert (
        isinstance(action, Wait) and action.refused and "refusing to remove kv-2" in action.message
    )


def test_a_wiped_voter_is_removed_and_added_again() -> None:
    obs = with_pod(cluster(3), 2, cluster_id="", applied_index=0)
    action = plan(spec(3), obs)
    assert action == RemoveMember("ReplacingMember",
                                  "kv-2 came back with an empty volume: replacing it", "kv-2")  # fmt: skip
    removed = with_pod(cluster(2, pods=3), 2, cluster_id="", applied_index=0)
    assert plan(spec(3), removed) == AddLearner("ScalingUp", "adding kv-2 as a learner", "kv-2", 2)


def test_a_restarting_pod_is_not_removed() -> None:
    obs = with_pod(cluster(3), 1, reachable=False, ready=False)
    action = plan(spec(3), obs)
    assert isinstance(action, Wait) and action.reason == "Degraded"


def test_rolling_update_goes_outsiders_then_followers_then_the_leader() -> None:
    obs = cluster(3, leader=1)
    obs = replace(obs, pods=tuple(replace(p, template_hash="old") for p in obs.pods))
    first = plan(spec(3), obs)
    assert first == DeletePod("RollingUpdate", "restarting kv-2 with the new template", "kv-2")
    obs = with_pod(obs, 2, template_hash="h1")
    assert plan(spec(3), obs).pod == "kv-0"  # type: ignore[attr-defined]
    obs = with_pod(obs, 0, template_hash="h1")
    action = plan(spec(3), obs)
    assert isinstance(action, TransferLeadership) and action.source == "kv-1"
    moved = replace(with_pod(with_pod(obs, 1, role="follower"), 0, role="leader"), leader="kv-0")
    assert plan(spec(3), moved) == DeletePod("RollingUpdate", "restarting kv-1 with the new template",
                                             "kv-1")  # fmt: skip


def test_rolling_update_waits_for_the_replaced_pod_to_catch_up() -> None:
    obs = cluster(3)
    obs = replace(obs, pods=tuple(replace(p, template_hash="old") for p in obs.pods))
    obs = with_pod(obs, 2, template_hash="h1", applied_index=3, ready=False)
    action = plan(spec(3), obs)
    assert isinstance(action, Wait) and "kv-2" in action.message


def test_different_cluster_ids_stop_everything() -> None:
    obs = with_pod(cluster(3), 2, cluster_id="other")
    action = plan(spec(5), obs)
    assert isinstance(action, Halt) and action.condition == "ClusterIDMismatch"
    assert "other" in action.message
    unlatched = replace(with_pod(cluster(3), 2, cluster_id="other"), latched_cluster_id="")
    assert isinstance(plan(spec(3), unlatched), Halt)


def test_paused_and_converged() -> None:
    assert isinstance(plan(spec(3, paused=True), cluster(3)), Paused)
    assert isinstance(plan(spec(3), cluster(3)), Converged)


# --- properties ------------------------------------------------------------------------

MAX = 7


class _Coins:
    """Weighted coin flips from a seed hypothesis draws (its own integers favour the
    edges, which would make every rare fault common)."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)

    def __call__(self, p_true: int) -> bool:
        return self.rnd.random() * 10 < p_true


@st.composite
def states(draw: st.DrawFn) -> tuple[PlanSpec, Observed]:
    """Mostly plausible clusters (a configuration that matches the pods) with faults
    sprinkled in, so that every kind of step is exercised, plus some nonsense."""
    coin = _Coins(draw(st.integers(0, 2**32)))
    replicas = draw(st.integers(1, MAX))
    latched = CID if coin(9) else ""
    n_voters = draw(st.integers(1, MAX))
    voter_ids = set(range(n_voters))
    if coin(2):  # a gap: some ordinal is not a voter
        voter_ids.discard(draw(st.integers(0, n_voters - 1)))
    if coin(1):
        voter_ids |= draw(st.sets(st.integers(0, MAX - 1), max_size=3))
    learner_ids = {draw(st.integers(0, MAX - 1))} if coin(3) else set()
    learner_ids -= voter_ids
    top = max(voter_ids | learner_ids, default=0) + 1
    sts = None if coin(1) else max(0, top + draw(st.integers(-2, 2)))
    pod_ordinals = set(range(sts or 0))
    if coin(2):
        pod_ordinals ^= draw(st.sets(st.integers(0, MAX - 1), max_size=2))
    pods = []
    for i in sorted(pod_ordinals):
        cluster_id = CID if coin(9) else draw(st.sampled_from([CID, "", "", "other"]))
        pods.append(
            PodView(
                name=f"kv-{i}",
                ordinal=i,
                ready=coin(9),
                deleting=coin(1) and coin(5),
                template_hash="h1" if coin(7) else "h0",
                reachable=coin(9),
                cluster_id=cluster_id,
                role="follower",
                applied_index=100 if coin(8) else draw(st.integers(0, 120)),
            )
        )
    members = tuple(
        MemberView(
            f"kv-{i}",
            "voter" if i in voter_ids else "learner",
            0 if coin(8) else draw(st.integers(0, 200)),
            draw(st.sampled_from([0.05] * 8 + [9.0, -1.0])),
        )
        for i in sorted(voter_ids | learner_ids)
    )
    candidates = [p.name for p in pods if f"kv-{p.ordinal}" in {f"kv-{v}" for v in voter_ids}
                  and p.reachable and p.cluster_id == (latched or CID)]  # fmt: skip
    leader = draw(st.sampled_from(candidates)) if candidates and coin(9) else ""
    pods = [replace(p, role="leader") if p.name == leader else p for p in pods]
    obs = Observed(
        latched_cluster_id=latched,
        sts_replicas=sts,
        pods=tuple(pods),
        pvc_ordinals=frozenset(pod_ordinals | draw(st.sets(st.integers(0, MAX), max_size=2))),
        leader=leader,
        leader_commit=100,
        members=members if leader else (),
    )
    paused = coin(1) and coin(5)
    return PlanSpec("kv", replicas, paused, "h1"), obs


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states())
def test_invariants(state: tuple[PlanSpec, Observed]) -> None:
    spec_, obs = state
    action = plan(spec_, obs)
    assert plan(spec_, obs) == action  # pure: same facts, same step
    ids = {p.cluster_id for p in obs.pods if p.reachable and p.cluster_id}

    if spec_.paused:
        assert isinstance(action, Paused)
        return
    # Identity: foreign ids stop everything; a cluster is bootstrapped at most once.
    if (obs.latched_cluster_id and ids - {obs.latched_cluster_id}) or len(ids) > 1:
        assert isinstance(action, Halt)
        return
    if isinstance(action, Bootstrap):
        assert not obs.latched_cluster_id and not ids
        assert action.pod == "kv-0"
    if isinstance(action, LatchClusterID):
        assert not obs.latched_cluster_id and ids == {action.cluster_id}

    voters, learners = obs.voters, obs.learners
    h = health(spec_, obs, obs.latched_cluster_id)
    healthy_voters = {v for v in voters if v in h.healthy}
    if action.changes_membership or isinstance(action, TransferLeadership):
        assert obs.latched_cluster_id and obs.leader  # only through a known leader
    # One membership change at a time: a new learner only when none is in flight.
    if isinstance(action, AddLearner):
        assert not learners and action.member not in voters
        assert action.ordinal < spec_.replicas
    if isinstance(action, Promote):
        assert action.member in learners
        assert len(healthy_voters) + 1 >= quorum(len(voters) + 1)
    # Never below quorum.
    if isinstance(action, RemoveMember) and action.member in voters:
        left = len(voters) - 1
        assert left >= 1
        assert len(healthy_voters - {action.member}) >= quorum(left)
    if isinstance(action, RemoveMember):
        assert action.member in voters or action.member in learners
    if isinstance(action, TransferLeadership):
        assert action.source == obs.leader and action.target in voters
        assert action.target in h.caught_up
    if isinstance(action, DeletePod) and action.pod in healthy_voters and len(voters) > 2:
        assert len(healthy_voters - {action.pod}) >= quorum(len(voters))
    shrinking = isinstance(action, ScaleStatefulSet) and obs.sts_replicas is not None
    if shrinking and action.replicas < obs.sts_replicas:  # type: ignore[attr-defined,operator]
        gone = {f"kv-{i}" for i in range(action.replicas, obs.sts_replicas)}  # type: ignore[attr-defined,arg-type]
        assert not gone & set(voters)  # only pods that are no longer voters go
    if isinstance(action, DeletePVC):
        name = f"kv-{action.ordinal}"
        assert name not in voters and obs.pod(name) is None
        assert obs.sts_replicas is None or action.ordinal >= obs.sts_replicas


@settings(max_examples=300, deadline=None)
@given(st.integers(1, MAX), st.integers(1, MAX))
def test_scaling_converges_one_step_at_a_time(start: int, target: int) -> None:
    """Drive a model cluster with the planner's actions; it reaches the target without
    ever dropping below quorum or changing two things at once."""
    voters = {f"kv-{i}" for i in range(start)}
    learners: set[str] = set()
    sts, claims, leader = start, set(range(start)), "kv-0"
    for _ in range(10 * MAX):
        members = tuple(MemberView(v, "voter") for v in sorted(voters)) + tuple(
            MemberView(v, "learner") for v in sorted(learners)
        )
        pods = tuple(pod(i, role="leader" if f"kv-{i}" == leader else "follower")
                     for i in range(sts))  # fmt: skip
        obs = Observed(CID, sts, pods, frozenset(claims), leader, 100, members)
        action = plan(spec(target), obs)
        match action:
            case Converged():
                break
            case AddLearner(member=m):
                learners.add(m)
            case Promote(member=m):
                learners.discard(m)
                voters.add(m)
            case RemoveMember(member=m):
                voters.discard(m)
                learners.discard(m)
                assert voters
            case TransferLeadership(target=t):
                leader = t
            case ScaleStatefulSet(replicas=n):
                claims |= set(range(n))
                sts = n
            case DeletePVC(ordinal=o):
                claims.discard(o)
            case _:
                raise AssertionError(f"unexpected {action}")
        assert leader in voters
    else:
        raise AssertionError("did not converge")
    assert voters == {f"kv-{i}" for i in range(target)} and not learners
    assert sts == target and claims == set(range(target))
