"""Real clusters of sidecar and Module processes on loopback: formation from the env
vars alone, cold restart, exactly-once across a failover, snapshot catch-up, and a
Module rebuilt after it dies on its own."""

from __future__ import annotations

import json
import random
import signal
import threading

import grpc
import pytest

from tinyraft import BlockingCaller
from tinyraft.caller import RetryPolicy, Unavailable
from tinyraft.v1 import caller_pb2 as cpb
from tinyraft.v1 import caller_pb2_grpc


def put(key: str, value: str) -> bytes:
    return json.dumps({"op": "put", "key": key, "value": value}).encode()


def get(key: str) -> bytes:
    return json.dumps({"op": "get", "key": key}).encode()


def value_of(answer: bytes) -> str | None:
    return json.loads(answer)["value"]


def applied_everywhere(cluster) -> bool:
    statuses = [cluster.try_status(m) for m in cluster.members]
    if any(s is None for s in statuses):
        return False
    return len({(s.commit_index, s.applied_index) for s in statuses}) == 1


@pytest.mark.parametrize("members", [3, 5])
def test_cluster_forms_from_env_vars_and_replicates(make_cluster, members):
    cluster = make_cluster(members)
    leader = cluster.leader()
    status = cluster.status(leader)
    assert sorted(p.member_id for p in status.members if p.suffrage == "voter") == [
        f"n{i}" for i in range(1, members + 1)
    ]
    with BlockingCaller(cluster.addresses()) as caller:
        for i in range(20):
            assert caller.apply(put(f"k{i}", f"v{i}")) == b'{"ok":true}'
        assert value_of(caller.query(get("k19"))) == "v19"
    cluster.wait_for(lambda: applied_everywhere(cluster), 10, "every member to apply everything")
    ids = {cluster.status(m).cluster_id for m in cluster.members}
    assert len(ids) == 1 and ids != {""}


def test_full_cluster_cold_restart_keeps_every_acknowledged_write(make_cluster):
    cluster = make_cluster(3)
    acked: dict[str, str] = {}
    stop = threading.Event()

    def writer(n: int) -> None:
        # a short deadline: once every member is killed, each writer gives up quickly
        with BlockingCaller(
            cluster.addresses(), timeout=2.0, retry=RetryPolicy(deadline=4.0)
        ) as caller:
            i = 0
            while not stop.is_set():
                key, value = f"w{n}-{i}", f"{i}"
                try:
                    caller.apply(put(key, value))
                except Exception:
                    return  # the cluster went down under us: that write is unknown
                acked[key] = value
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    cluster.wait_for(lambda: len(acked) >= 200, 30, "200 acknowledged writes")
    for member in cluster.members:  # all at once, mid-write
        cluster.kill(member)
    stop.set()
    for t in threads:
        t.join(30)
    snapshot = dict(acked)
    for member in cluster.members:
        cluster.restart(member)
    cluster.wait_for(cluster.leader, 30, "a leader after the cold restart")
    with BlockingCaller(cluster.addresses()) as caller:
        lost = [k for k, v in snapshot.items() if value_of(caller.query(get(k))) != v]
    assert not lost, f"{len(lost)} of {len(snapshot)} acknowledged writes lost: {lost[:5]}"


def test_a_retried_command_is_applied_once_across_a_failover(make_cluster):
    cluster = make_cluster(3, module="wordtracker")
    leader = cluster.leader()
    word = json.dumps({"op": "add", "word": "raft"}).encode()
    request = cpb.ApplyRequest(
        commands=[cpb.Command(client_id=4242, sequence=1, ack_below=1, payload=word)]
    )
    with cluster.channel(leader) as ch:
        first = caller_pb2_grpc.CallerStub(ch).Apply(request, timeout=5)
    assert first.results[0].result == b'{"count":1}'
    # The answer "was lost": the leader dies, and the client retries the same command.
    cluster.kill(leader)
    new_leader = cluster.wait_for(
        lambda: (lead := cluster.leader()) != leader and lead, 20, "a new leader"
    )
    for member in [new_leader, *(m for m in cluster.members if m not in (leader, new_leader))]:
        with cluster.channel(member) as ch:
            retry = caller_pb2_grpc.CallerStub(ch).Apply(request, timeout=5)
        assert retry.results[0].result == b'{"count":1}', "the retry was applied again"
    cluster.restart(leader)
    with BlockingCaller(cluster.addresses()) as caller:
        count = json.loads(caller.query(json.dumps({"op": "count", "word": "raft"}).encode()))
    assert count == {"count": 1}


def test_a_call_during_an_election_is_held_until_the_new_leader_answers(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.leader()
    survivors = [m for m in cluster.members if m != leader]
    with BlockingCaller(cluster.addresses()) as caller:
        caller.apply(put("before", "1"))
    cluster.kill(leader)
    # One attempt, no client retries: the survivor still believes in the dead leader,
    # so the call is held until the survivors elect a new one, then answered.
    request = cpb.ApplyRequest(
        commands=[cpb.Command(client_id=77, sequence=1, ack_below=1, payload=put("during", "2"))]
    )
    with cluster.channel(survivors[0]) as ch:
        reply = caller_pb2_grpc.CallerStub(ch).Apply(request, timeout=10)
    assert reply.results[0].error == ""
    new_leader = cluster.leader()
    assert new_leader in survivors
    # Without a quorum no leader can come: the held call ends with a reason, in time.
    cluster.kill(new_leader)
    alone = next(m for m in survivors if m != new_leader)
    with cluster.channel(alone) as ch, pytest.raises(grpc.RpcError) as refused:
        caller_pb2_grpc.CallerStub(ch).Apply(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no leader was elected in time" in refused.value.details()
    # On the Caller's stream too, the hold fits in the Caller's timeout (here shorter
    # than the 2 s a member holds at most): the reason arrives, not the Caller's own
    # "no answer in time".
    alone_caller = BlockingCaller(
        cluster.members[alone].address, timeout=1.0, retry=RetryPolicy(max_attempts=1)
    )
    with alone_caller, pytest.raises(Unavailable, match="no leader was elected in time"):
        alone_caller.apply(put("during", "3"))


def test_a_call_forwarded_to_a_frozen_leader_goes_to_the_next_one(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.leader()
    follower = next(m for m in cluster.members if m != leader)
    with BlockingCaller(cluster.addresses()) as caller:
        caller.apply(put("before", "1"))
    # SIGSTOP keeps the frozen leader's connections open: the forwarded call gets no
    # answer and no error. The follower must notice the new leader and go there.
    cluster.signal(leader, signal.SIGSTOP)
    try:
        request = cpb.ApplyRequest(
            client_id=78, first_sequence=1, ack_below=1, payloads=[put("frozen", "2")]
        )
        with cluster.channel(follower) as ch:
            reply = caller_pb2_grpc.CallerStub(ch).Apply(request, timeout=10)
        assert list(reply.packed_results) == [b'{"ok":true}'] and not reply.errors
    finally:
        cluster.signal(leader, signal.SIGCONT)
    with BlockingCaller(cluster.addresses()) as caller:
        assert value_of(caller.query(get("frozen"))) == "2"


def test_a_follower_behind_the_compaction_point_catches_up_by_snapshot(make_cluster):
    cluster = make_cluster(3, env={"RAFT_SNAPSHOT_ENTRIES": "50"})
    leader = cluster.leader()
    lagging = next(m for m in cluster.members if m != leader)
    cluster.kill(lagging)
    with BlockingCaller([cluster.members[leader].address]) as caller:
        for i in range(300):
            caller.apply(put(f"s{i % 30}", str(i)))
    status = cluster.status(leader)
    assert status.snapshot_index > 100, "the leader compacted its log"
    cluster.restart(lagging)
    cluster.wait_for(lambda: applied_everywhere(cluster), 30, f"{lagging} to catch up")
    log = (cluster.base_dir / lagging / f"{lagging}.sidecar.log").read_text()
    assert "installed a snapshot" in log
    with cluster.channel(lagging) as ch:
        stub = caller_pb2_grpc.CallerStub(ch)
        answer = stub.Query(cpb.QueryRequest(request=get("s29")), timeout=5)
    assert value_of(answer.answer) == "299"


def test_a_module_that_dies_alone_is_rebuilt_from_snapshot_and_log(make_cluster):
    cluster = make_cluster(3, env={"RAFT_SNAPSHOT_ENTRIES": "40"})
    rng = random.Random(5)
    expected = {}
    with BlockingCaller(cluster.addresses()) as caller:
        for i in range(100):
            key = f"m{rng.randrange(10)}"
            expected[key] = str(i)
            caller.apply(put(key, str(i)))
        victim = next(m for m in cluster.members if m != cluster.leader())
        cluster.signal(victim, signal.SIGKILL, module=True)
        cluster.members[victim].module.wait(10)
        cluster.start_module(victim)
        for i in range(100, 120):  # new entries reach the restarted, empty Module
            key = f"m{rng.randrange(10)}"
            expected[key] = str(i)
            caller.apply(put(key, str(i)))
    cluster.wait_for(lambda: applied_everywhere(cluster), 30, "every member to apply")
    with cluster.channel(victim) as ch:
        stub = caller_pb2_grpc.CallerStub(ch)
        for key, value in expected.items():
            req = cpb.QueryRequest(request=get(key), consistency=cpb.CONSISTENCY_STALE)
            assert value_of(stub.Query(req, timeout=5).answer) == value
    log = (cluster.base_dir / victim / f"{victim}.sidecar.log").read_text()
    assert "rebuilding it" in log


def test_sigterm_on_the_leader_hands_over_and_keeps_membership(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.leader()
    assert cluster.stop(leader) == 0
    new_leader = cluster.wait_for(
        lambda: (lead := cluster.leader()) != leader and lead, 10, "a new leader"
    )
    log = (cluster.base_dir / leader / f"{leader}.sidecar.log").read_text()
    assert "handing leadership to" in log
    voters = {p.member_id for p in cluster.status(new_leader).members if p.suffrage == "voter"}
    assert voters == {"n1", "n2", "n3"}, "a graceful stop must not change membership"
    cluster.restart(leader)
    with BlockingCaller([cluster.members[leader].address]) as caller:
        assert caller.apply(put("after", "restart")) == b'{"ok":true}'  # forwarded
    cluster.wait_for(lambda: applied_everywhere(cluster), 20, f"{leader} to rejoin")


def test_health_reflection_and_metrics_are_served(make_cluster):
    import urllib.request

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    cluster = make_cluster(3)
    member = "n2"
    with cluster.channel(member) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "tinyraft.ready"):
            cluster.wait_for(
                lambda s=service: (
                    health.Check(health_pb2.HealthCheckRequest(service=s), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ),
                10,
                f"health service {service!r} to serve",
            )
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"tinyraft.v1.Caller", "tinyraft.v1.Admin", "tinyraft.v1.Peer"} <= names
    port = cluster.members[member].metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in (
        "tinyraft_server_has_leader 1.0",
        "tinyraft_server_is_leader 0.0",
        "tinyraft_server_is_learner 0.0",
        "tinyraft_server_term",
        "tinyraft_server_leader_changes_seen_total",
        "tinyraft_server_proposals_pending",
        "tinyraft_disk_wal_fsync_duration_seconds_bucket",
        "tinyraft_server_apply_duration_seconds_bucket",
        'tinyraft_cluster_members{suffrage="voter"} 3.0',
        "tinyraft_build_info",
    ):
        assert name in text, f"{name} missing from /metrics"


def test_only_the_current_leader_exports_follower_lag(make_cluster):
    """A former leader must not keep reporting lag (an alert on it would never clear)."""
    import urllib.request

    from tinyraft.v1 import admin_pb2, admin_pb2_grpc

    cluster = make_cluster(3)

    def lag_series(member: str) -> list[str]:
        port = cluster.members[member].metrics_port
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        return [
            line for line in page.decode().splitlines()
            if line.startswith("tinyraft_network_peer_lag_entries{")
        ]  # fmt: skip

    old = cluster.wait_for(cluster.leader, 10, "a leader")
    cluster.wait_for(lambda: len(lag_series(old)) == 2, 10, "the leader to export lag")
    target = next(m for m in cluster.members if m != old)
    admin_pb2_grpc.AdminStub(cluster.channel(old)).TransferLeadership(
        admin_pb2.TransferLeadershipRequest(member_id=target), timeout=10
    )
    cluster.wait_for(lambda: cluster.leader() == target, 10, f"{target} to lead")
    cluster.wait_for(lambda: not lag_series(old), 10, "the former leader to drop its lag")
    cluster.wait_for(lambda: len(lag_series(target)) == 2, 10, "the new leader's lag")


def test_a_member_restarts_after_snapshots_with_its_peers_addresses(make_cluster):
    cluster = make_cluster(3, env={"RAFT_SNAPSHOT_ENTRIES": "20"})
    with BlockingCaller(cluster.addresses()) as caller:
        for i in range(60):
            caller.apply(put(f"r{i}", str(i)))
    for member in list(cluster.members):
        cluster.wait_for(
            lambda m=member: (s := cluster.try_status(m)) and s.snapshot_index > 0,
            10,
            f"{member} to snapshot",
        )
        cluster.kill(member)
        cluster.restart(member)
        cluster.wait_for(lambda: applied_everywhere(cluster), 20, f"{member} back in step")
    with BlockingCaller(cluster.addresses()) as caller:
        assert value_of(caller.query(get("r59"))) == "59"
        assert caller.apply(put("after", "restarts")) == b'{"ok":true}'
