"""Chaos: concurrent clients against a real kv cluster while members are killed,
paused, partitioned and lose their Module; afterwards the history must be
linearizable, no acknowledged write may be lost, and the cluster must converge.

Six asyncio Callers (one operation at a time each, with per-call deadlines) put,
cas and read (linearizable, sometimes lease) a few keys of a 3-member and a 5-member
kv cluster of real sidecar and Module processes. A fault injector on a seeded RNG
meanwhile, over and over (every kind once per round, in a random order; half of them
aimed at the leader): SIGKILLs a member's sidecar and restarts it; SIGSTOPs one and
SIGCONTs it (a paused leader is sometimes also cut off until shortly after it
resumes); cuts one member, or the leader (with 5 members, sometimes the leader and
one follower), off and heals; kills a member's Module on its own and restarts it (the
sidecar must rebuild it from its snapshot and log). Snapshots are taken every 300
entries, so restarts and lagging members go through snapshots too.

Every operation is recorded with call and return times from the test process's
monotonic clock; a write that failed or timed out has an unknown outcome, a read that
failed is dropped. After the faults: heal, resume and restart whatever is down, wait
until every member follows one leader with equal applied indexes, read every key
linearizably through every member, then check
  0. no sidecar or Module exited on its own;
  1. the whole history is linearizable (tinyraft.sim.linearizability.check_kv);
  2. no acknowledged write is lost: the final reads are part of the history, so each
     key's final value must be its last acknowledged write or a later unknown one;
  3. the cluster converged: same leader, equal applied indexes, and every member's
     Module answers the same for every key (read "stale", i.e. from that Module).
A failure prints the seed, the fault schedule (with wall-clock times to find in the
member logs) and the tail of the history; a pass prints the same with -rP.

The default run is a bounded slice for CI: ~20 s of faults on 3 members and ~15 s on 5,
for two fixed seeds (about 30 s per case). The full run, by hand (about 4 hours):

    TINYRAFT_CHAOS_SECONDS=600 TINYRAFT_CHAOS_SEEDS=10 \\
        .venv/bin/python -m pytest tests/test_chaos.py -q

TINYRAFT_CHAOS_SEEDS=N runs seeds 1..N; TINYRAFT_CHAOS_SEED=S runs only seed S (to
replay a failure; the timing, and so the exact schedule, will differ a little).

The tests after test_chaos each pin down one fault in the timing that exposes a bug the
chaos run found, so that a failure names its cause at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable

import pytest

from chaos_workload import (
    Run,
    check_processes,
    client,
    final_reads,
    history_tail,
    inject_faults,
    repair,
)
from tinyraft.caller import BlockingCaller, Caller, RetryPolicy, TinyraftError
from tinyraft.local import LocalCluster
from tinyraft.sim.linearizability import check_kv
from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc

CLIENTS = 6
KEYS = ["a", "b", "c", "d"]
DEFAULT_SEEDS = [1, 2]
# Snapshot often, so that restarts, rebuilds and lagging members use snapshots.
CLUSTER_ENV = {"RAFT_SNAPSHOT_ENTRIES": "300"}
CONVERGE_TIMEOUT_S = 60.0


def _seconds(default: float) -> float:
    value = os.environ.get("TINYRAFT_CHAOS_SECONDS")
    return float(value) if value else default


def _seeds() -> list[int]:
    if one := os.environ.get("TINYRAFT_CHAOS_SEED"):
        return [int(one)]
    if count := os.environ.get("TINYRAFT_CHAOS_SEEDS"):
        return list(range(1, int(count) + 1))
    return DEFAULT_SEEDS


SIZES = [
    pytest.param(3, _seconds(20), id="3-members"),
    pytest.param(5, _seconds(15), id="5-members"),
]
# Faults, then up to a minute to converge, forming, final reads and the check.
TIMEOUT_S = int(max(_seconds(20), _seconds(15)) * 1.5 + 240)


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("seed", _seeds(), ids=lambda s: f"seed{s}")
@pytest.mark.parametrize(("members", "seconds"), SIZES)
def test_chaos(
    make_cluster: Callable[..., LocalCluster], members: int, seconds: float, seed: int
) -> None:
    cluster = make_cluster(members, faults=True, env=CLUSTER_ENV)
    run = Run(seed)

    async def chaos() -> None:
        stop_at = run.now() + seconds
        targets = cluster.addresses()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(inject_faults(run, cluster, stop_at))
                for i in range(CLIENTS):
                    group.create_task(client(run, i, targets, KEYS, stop_at))
        finally:
            repair(run, cluster)

    asyncio.run(chaos())
    run.note("fault phase over; waiting for the cluster to converge")
    problems: list[str] = []
    failed_key: str | None = None
    if run.crashes:
        problems.append("member processes exited on their own: " + "; ".join(run.crashes))

    def converged() -> list[apb.AdminStatusResponse] | None:
        statuses = [cluster.try_status(m) for m in sorted(cluster.members)]
        if any(s is None for s in statuses):
            return None
        found = [s for s in statuses if s is not None]
        leaders = {s.leader_id for s in found}
        applied = {s.applied_index for s in found}
        commit = max(s.commit_index for s in found)
        if len(leaders) == 1 and "" not in leaders and applied == {commit}:
            return found
        return None

    try:
        cluster.wait_for(converged, CONVERGE_TIMEOUT_S, "one leader and equal applied indexes")
    except TimeoutError as err:
        check_processes(run, cluster)
        problems.append(
            f"the cluster did not converge after healing: {err}; statuses: {_brief(cluster)}"
            + ("; exited: " + "; ".join(run.crashes) if run.crashes else "")
        )
    else:
        try:
            held = asyncio.run(final_reads(run, cluster, KEYS))
        except Exception as err:
            problems.append(f"a final read failed on the healed cluster: {err!r}")
        else:
            if len({tuple(sorted(data.items())) for data in held.values()}) != 1:
                problems.append(f"the members' Modules hold different data: {held}")

    acknowledged = run.outcomes["put ok"] + run.outcomes["cas ok"]
    reads = run.outcomes["get ok"] + run.outcomes["get (lease) ok"]
    if acknowledged < 50 or reads < 50:
        problems.append(f"too little got through: {acknowledged} writes, {reads} reads")

    result = check_kv(run.history, budget_s=max(30.0, seconds))
    if not result.ok:
        problems.append(f"the history of {len(run.history)} ops is not linearizable (below)")
        failed_key = result.key

    if not problems and converged() is None:
        problems.append(f"the cluster diverged after the final reads: {_brief(cluster)}")

    summary = (
        f"seed {seed}, {members} members, {seconds:g}s of faults "
        f"(replay: TINYRAFT_CHAOS_SEED={seed} TINYRAFT_CHAOS_SECONDS={seconds:g})\n"
        f"outcomes: {dict(sorted(run.outcomes.items()))}\n{result.explanation}\n\n"
        "fault schedule:\n" + "\n".join(run.faults)
    )
    if not problems:
        print(summary)  # shown with -rP or -s
    else:
        pytest.fail(
            "\n".join(problems) + "\n\n" + summary + "\n\n"
            f"history tail{f' of key {failed_key!r}' if failed_key else ''} "
            "(times in s from the start):\n" + history_tail(run.history, failed_key),
            pytrace=False,
        )


def _brief(cluster: LocalCluster) -> str:
    statuses = {m: cluster.try_status(m) for m in sorted(cluster.members)}
    return "; ".join(
        f"{m} unreachable"
        if s is None
        else f"{s.member_id} {s.role} term {s.term} leader {s.leader_id or '?'} "
        f"commit {s.commit_index} applied {s.applied_index}"
        for m, s in statuses.items()
    )


# -- single faults, pinned down ------------------------------------------------------------
# Each fault of the chaos run on its own, in the timing that exposes it, so that a failure
# here names its cause at once. They would fail the chaos run too, only less directly.


def _put(key: str, value: str) -> bytes:
    return json.dumps({"op": "put", "key": key, "value": value}).encode()


def _get(key: str) -> bytes:
    return json.dumps({"op": "get", "key": key}).encode()


def test_a_member_restarts_after_compacting_its_log(make_cluster: Callable[..., LocalCluster]):
    """SIGKILL and restart a member whose log was compacted into its own snapshot."""
    cluster = make_cluster(3, env={"RAFT_SNAPSHOT_ENTRIES": "20"})
    with BlockingCaller(cluster.addresses()) as caller:
        for i in range(50):
            caller.apply(_put("k", str(i)))
    victim = next(m for m in sorted(cluster.members) if m != cluster.leader())
    cluster.wait_for(
        lambda: (s := cluster.try_status(victim)) is not None and s.snapshot_index > 0,
        30,
        f"{victim} to compact its log",
    )
    cluster.kill(victim)
    cluster.restart(victim)
    sidecar = cluster.members[victim].sidecar
    assert sidecar is not None
    cluster.wait_for(
        lambda: sidecar.poll() is not None or cluster.try_status(victim) is not None,
        30,
        f"{victim} to serve again (or exit)",
    )
    log = (cluster.base_dir / victim / f"{victim}.sidecar.log").read_text().splitlines()
    assert sidecar.poll() is None, f"{victim} exited on restart: {log[-1]}"


def test_a_restarted_module_never_answers_reads_while_empty(
    make_cluster: Callable[..., LocalCluster],
):
    """Kill a follower's Module on its own and restart it while no command is coming in:
    a read through that member must not see the new, empty Module's state."""
    cluster = make_cluster(3)
    with BlockingCaller(cluster.addresses()) as caller:
        caller.apply(_put("x", "1"))
    victim = next(m for m in sorted(cluster.members) if m != cluster.leader())
    cluster.wait_for(lambda: _applied_everywhere(cluster), 30, "every member to apply")
    cluster.signal(victim, signal.SIGKILL, module=True)
    cluster.start_module(victim)
    # Through the victim only: a read it cannot serve yet is retried until it can.
    with BlockingCaller([cluster.members[victim].address]) as caller:
        answer = json.loads(caller.query(_get("x")))
    assert answer == {"value": "1"}, f"a linearizable read through {victim} saw {answer}"


def test_a_snapshot_that_arrives_while_the_module_is_down_is_restored_when_it_is_back(
    make_cluster: Callable[..., LocalCluster],
):
    """A follower cut off while the leader compacts its log needs a snapshot; its
    Module dies before the snapshot arrives. Once the Module is back, the follower must
    restore the snapshot into it and catch up."""
    cluster = make_cluster(3, faults=True, env={"RAFT_SNAPSHOT_ENTRIES": "20"})
    leader = cluster.leader()
    victim = next(m for m in sorted(cluster.members) if m != leader)
    cluster.partition([victim])
    with BlockingCaller(cluster.addresses()) as caller:
        for i in range(60):
            caller.apply(_put("k", str(i)))
    cluster.signal(victim, signal.SIGKILL, module=True)
    cluster.heal()
    cluster.wait_for(
        lambda: (s := cluster.try_status(victim)) is not None and s.snapshot_index > 0,
        30,
        f"{victim} to install the leader's snapshot",
    )
    log = cluster.base_dir / victim / f"{victim}.sidecar.log"
    # The Module stays down until the sidecar has failed to restore into it once.
    cluster.wait_for(lambda: "; retrying" in log.read_text(), 30, "a failed restore attempt")
    cluster.start_module(victim)
    try:
        cluster.wait_for(lambda: _applied_everywhere(cluster), 30, f"{victim} to catch up")
        caught_up = True
    except TimeoutError:
        caught_up = False
    lines = log.read_text().splitlines()
    last = next((line for line in reversed(lines) if "tinyraft.apply" in line), lines[-1])
    assert caught_up, f"{victim} never restored the snapshot into its Module; it logs: {last}"


def test_a_paused_and_cut_off_leader_serves_no_stale_lease_read(
    make_cluster: Callable[..., LocalCluster],
):
    """SIGSTOP the leader and cut it off; the others elect a new leader, which commits a
    write. A lease read sent to the old leader meanwhile is answered when it resumes,
    before it hears of the new term: it must not return the overwritten value (time
    passed while it was stopped, so its lease ran out)."""
    cluster = make_cluster(3, faults=True)
    with BlockingCaller(cluster.addresses()) as caller:
        caller.apply(_put("x", "old"))
        caller.query(_get("x"), "lease")
    old = cluster.leader()
    assert old is not None
    cluster.signal(old, signal.SIGSTOP)
    cluster.partition([old])
    try:
        new = cluster.wait_for_new_leader(old, 30)
        with BlockingCaller([cluster.members[new].address]) as caller:
            caller.apply(_put("x", "new"))

        async def lease_read_as_the_old_leader_resumes() -> bytes | None:
            once = RetryPolicy(max_attempts=1, deadline=10.0)
            async with Caller([cluster.members[old].address], timeout=10.0, retry=once) as c:
                read = asyncio.create_task(c.query(_get("x"), "lease"))
                await asyncio.sleep(0.5)  # the request waits in the stopped leader's socket
                cluster.signal(old, signal.SIGCONT)
                try:
                    return await read
                except TinyraftError:
                    return None  # refusing is fine; answering stale is not

        answer = asyncio.run(lease_read_as_the_old_leader_resumes())
    finally:
        cluster.signal(old, signal.SIGCONT)
        cluster.heal()
    assert answer is None or json.loads(answer) == {"value": "new"}, (
        f"the resumed old leader {old} answered a lease read with {answer!r} after {new} "
        "had committed x=new"
    )


def test_a_cut_off_leader_that_still_thinks_it_leads_releases_no_linearizable_read(
    make_cluster: Callable[..., LocalCluster],
):
    """Cut the leader off; with a long election timeout it goes on believing it leads
    while the others elect a new leader, which commits a write. A linearizable read
    sent to the old leader then must not return the overwritten value: its Module
    answers at once, but the answers wait for followers to confirm it still leads,
    and they never do."""
    cluster = make_cluster(3, faults=True)
    first = cluster.wait_for(cluster.leader, 10, "a leader")
    old = next(m for m in cluster.members if m != first)
    _restart_never_timing_out(cluster, old)
    admin_pb2_grpc.AdminStub(cluster.channel(first)).TransferLeadership(
        apb.TransferLeadershipRequest(member_id=old), timeout=10
    )
    cluster.wait_for(lambda: cluster.leader() == old, 10, f"{old} to lead")
    with BlockingCaller([cluster.members[old].address]) as caller:
        caller.apply(_put("x", "old"))
        caller.query(_get("x"))
    cluster.partition([old])
    try:
        new = cluster.wait_for_new_leader(old, 30)
        with BlockingCaller([cluster.members[new].address]) as caller:
            caller.apply(_put("x", "new"))
        status = cluster.status(old)
        assert status.role == "leader", f"{old} should still think it leads; it is {status.role}"
        answer = _read_once(cluster, old, _get("x"))
    finally:
        cluster.heal()
    assert answer is None or json.loads(answer) == {"value": "new"}, (
        f"the cut-off old leader {old} answered a linearizable read with {answer!r} after "
        f"{new} had committed x=new"
    )


def test_a_cut_off_follower_that_still_knows_a_leader_releases_no_linearizable_read(
    make_cluster: Callable[..., LocalCluster],
):
    """Cut a follower off; with a long election timeout it goes on believing in its
    leader while the leader commits a write. A linearizable read sent to the follower
    must not return the overwritten value: its Module answers at once, but the answers
    wait for the leader to confirm a read index, which never reaches it."""
    cluster = make_cluster(3, faults=True)
    leader = cluster.wait_for(cluster.leader, 10, "a leader")
    follower = next(m for m in cluster.members if m != leader)
    _restart_never_timing_out(cluster, follower)
    with BlockingCaller([cluster.members[leader].address]) as caller:
        caller.apply(_put("x", "old"))
    cluster.wait_for(lambda: _applied_everywhere(cluster), 30, f"{follower} to catch up")
    cluster.partition([follower])
    try:
        with BlockingCaller([cluster.members[leader].address]) as caller:
            caller.apply(_put("x", "new"))
        status = cluster.status(follower)
        assert status.leader_id == leader, f"{follower} should still know {leader} leads"
        answer = _read_once(cluster, follower, _get("x"))
    finally:
        cluster.heal()
    assert answer is None or json.loads(answer) == {"value": "new"}, (
        f"the cut-off follower {follower} answered a linearizable read with {answer!r} "
        f"after {leader} had committed x=new"
    )


def _restart_never_timing_out(cluster: LocalCluster, member: str) -> None:
    """Restart a member with an election timeout of 60 s: cut off, it goes on believing
    in the leader it knew (or in its own leadership) for the rest of the test."""
    assert cluster.stop(member) == 0
    cluster.start_sidecar(member, env={"RAFT_ELECTION_MS": "60000"})
    cluster.wait_for(lambda: _applied_everywhere(cluster), 30, f"{member} to catch up")


def _read_once(cluster: LocalCluster, member: str, query: bytes) -> bytes | None:
    """A linearizable read at one member, one attempt; None if it was refused (fine:
    answering stale is not)."""
    once = RetryPolicy(max_attempts=1, deadline=3.0)
    with BlockingCaller([cluster.members[member].address], timeout=3.0, retry=once) as caller:
        try:
            return caller.query(query)
        except TinyraftError:
            return None


def _applied_everywhere(cluster: LocalCluster) -> bool:
    statuses = [cluster.try_status(m) for m in cluster.members]
    applied = {s.applied_index if s else -1 for s in statuses}
    return len(applied) == 1 and -1 not in applied
