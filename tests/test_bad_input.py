"""Bad input against real sidecar and Module processes: oversized and malformed
requests, nonsense admin calls, a misbehaving Module, bad configuration and data
dirs. Each is refused with a status or message a user can act on, and the member
keeps serving.

Most tests share one 3-member cluster (RAFT_MAX_COMMAND_BYTES=1KiB). Each finds the
leader afresh and leaves the cluster as it found it: three voters, one leader, every
Module running. The tests that stop members come last."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tests.shared_cluster import formed_cluster

from certs import CertAuthority
from tinyraft.caller import TIMEOUT_METADATA_KEY, BlockingCaller, InvalidArgument, RetryPolicy
from tinyraft.local import LocalCluster, LocalMember, free_port
from tinyraft.server.config import reference_table
from tinyraft.server.services import STREAM_IN_FLIGHT
from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc, caller_pb2_grpc, peer_pb2
from tinyraft.v1 import caller_pb2 as cpb

LIMIT = 1024
LEADER_KEY = "tinyraft-leader"
MEMBERS = ["n1", "n2", "n3"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = formed_cluster(
        tmp_path_factory.mktemp("bad-input"), 3, env={"RAFT_MAX_COMMAND_BYTES": "1KiB"}
    )
    try:
        yield c
    finally:
        c.close()


# -- helpers ---------------------------------------------------------------------------


def put(key: str, value: str) -> bytes:
    return json.dumps({"op": "put", "key": key, "value": value}).encode()


def cas(key: str, expect: str | None, value: str) -> bytes:
    return json.dumps({"op": "cas", "key": key, "expect": expect, "value": value}).encode()


def get(key: str) -> bytes:
    return json.dumps({"op": "get", "key": key}).encode()


class Refused:
    """What a failed call said: status code, details and the leader hint, if any."""

    def __init__(self, err: grpc.RpcError) -> None:
        self.code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
        self.details: str = err.details() or ""  # type: ignore[attr-defined]
        trailing = err.trailing_metadata() or ()  # type: ignore[attr-defined]
        self.leader = next((v for k, v in trailing if k == LEADER_KEY), None)

    def __repr__(self) -> str:
        return f"{self.code.name}: {self.details!r} (leader hint {self.leader!r})"


def refused(call: Callable[[], object]) -> Refused:
    """Make the call, which must fail; what it said."""
    try:
        result = call()
    except grpc.RpcError as err:
        return Refused(err)
    raise AssertionError(f"the call succeeded, answering {result!r}")


def leader_of(cluster: LocalCluster) -> str:
    return cluster.wait_for(cluster.leader, 15.0, "a leader")


def followers(cluster: LocalCluster, leader: str) -> list[str]:
    return [m for m in cluster.members if m != leader]


def caller_stub(cluster: LocalCluster, member: str) -> caller_pb2_grpc.CallerStub:
    return caller_pb2_grpc.CallerStub(cluster.channel(member))


def admin_stub(cluster: LocalCluster, member: str) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(cluster.channel(member))


def blocking_caller(cluster: LocalCluster, **kwargs: object) -> BlockingCaller:
    kwargs.setdefault("retry", RetryPolicy(deadline=30.0))
    return BlockingCaller(cluster.addresses(), **kwargs)  # type: ignore[arg-type]


def read(cluster: LocalCluster, key: str) -> str | None:
    with blocking_caller(cluster) as c:
        return json.loads(c.query(get(key)))["value"]  # type: ignore[no-any-return]


def apply_works(cluster: LocalCluster, key: str) -> None:
    """A normal write through the Caller SDK succeeds and is read back."""
    with blocking_caller(cluster) as c:
        assert json.loads(c.apply(put(key, "ok"))) == {"ok": True}
        assert json.loads(c.query(get(key))) == {"value": "ok"}


def all_running(cluster: LocalCluster) -> None:
    for m in cluster.members.values():
        assert m.sidecar is not None and m.sidecar.poll() is None, f"sidecar {m.id} exited"
        assert m.module is not None and m.module.poll() is None, f"module {m.id} exited"


def terms(cluster: LocalCluster) -> dict[str, int]:
    return {m: cluster.status(m).term for m in cluster.members}


def membership(cluster: LocalCluster) -> dict[str, str]:
    status = cluster.status(leader_of(cluster))
    return {p.member_id: p.suffrage for p in status.members}


def remove_strays(cluster: LocalCluster) -> None:
    """Undo a membership change a buggy refusal let through (keeps tests isolated)."""
    for member in membership(cluster):
        if member not in MEMBERS:
            admin_stub(cluster, leader_of(cluster)).RemoveMember(
                apb.MemberRequest(member_id=member), timeout=10
            )
    assert set(membership(cluster)) == set(MEMBERS)


def running_status(cluster: LocalCluster, member: str) -> apb.AdminStatusResponse | None:
    """try_status, but a sidecar that exited fails the wait at once, showing its log."""
    proc = cluster.members[member].sidecar
    if proc is not None and proc.poll() is not None:
        log = cluster.base_dir / member / f"{member}.sidecar.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise AssertionError(f"sidecar {member} exited with {proc.returncode}:\n{tail}")
    return cluster.try_status(member)


def command(payload: bytes, client_id: int = 4242, sequence: int = 1) -> cpb.Command:
    return cpb.Command(client_id=client_id, sequence=sequence, payload=payload)


# -- oversized commands ----------------------------------------------------------------


def test_oversized_command_is_refused_naming_the_limit(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    big = put("big", "x" * 2000)
    for member in cluster.members:  # followers check before forwarding
        r = refused(
            lambda m=member: caller_stub(cluster, m).Apply(
                cpb.ApplyRequest(commands=[command(big, client_id=77, sequence=1)]), timeout=5
            )
        )
        assert r.code == grpc.StatusCode.INVALID_ARGUMENT, (member, r)
        assert "RAFT_MAX_COMMAND_BYTES" in r.details and str(LIMIT) in r.details, r
    # One oversized command in a batch refuses the whole batch: nothing is applied.
    r = refused(
        lambda: caller_stub(cluster, leader).Apply(
            cpb.ApplyRequest(
                commands=[
                    command(put("batch-head", "1"), client_id=78, sequence=1),
                    command(big, client_id=78, sequence=2),
                ]
            ),
            timeout=5,
        )
    )
    assert r.code == grpc.StatusCode.INVALID_ARGUMENT and "commands[1]" in r.details, r
    assert read(cluster, "batch-head") is None
    all_running(cluster)
    apply_works(cluster, "after-oversized")


def test_bad_packed_requests_are_refused_naming_the_field(cluster: LocalCluster) -> None:
    big = put("packed-big", "x" * 2000)
    bad = {
        "payloads[1]": cpb.ApplyRequest(
            client_id=79, first_sequence=1, payloads=[put("packed-head", "1"), big]
        ),
        "client_id and first_sequence": cpb.ApplyRequest(payloads=[put("packed-head", "1")]),
        "one form or the other": cpb.ApplyRequest(
            client_id=79,
            first_sequence=1,
            payloads=[put("packed-head", "1")],
            commands=[command(put("packed-head", "1"), client_id=80)],
        ),
        "at least one command": cpb.ApplyRequest(client_id=79, first_sequence=1),
    }
    for member in cluster.members:  # followers check before forwarding
        for field, request in bad.items():
            r = refused(lambda m=member, q=request: caller_stub(cluster, m).Apply(q, timeout=5))
            assert r.code == grpc.StatusCode.INVALID_ARGUMENT and field in r.details, (member, r)
    assert read(cluster, "packed-head") is None
    all_running(cluster)
    apply_works(cluster, "after-bad-packed")


def test_a_bad_request_on_an_apply_stream_is_refused_alone(cluster: LocalCluster) -> None:
    """On ApplyStream a refusal answers its own request: the stream goes on, the
    requests around it are applied, and a follower names the leader it forwarded to."""
    leader = leader_of(cluster)
    leader_address = cluster.members[leader].address
    for n, member in enumerate(cluster.members):
        client = 90 + n
        requests = [
            cpb.ApplyRequest(client_id=client, first_sequence=1, payloads=[put(f"s{n}a", "1")]),
            cpb.ApplyRequest(client_id=client, first_sequence=2, payloads=[put("s", "x" * 2000)]),
            cpb.ApplyRequest(client_id=client, first_sequence=2, payloads=[put(f"s{n}b", "2")]),
        ]
        first, bad, last = caller_stub(cluster, member).ApplyStream(iter(requests), timeout=10)
        assert (first.code, list(first.response.packed_results)) == (0, [b'{"ok":true}'])
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], bad
        assert "payloads[0]" in bad.message and "RAFT_MAX_COMMAND_BYTES" in bad.message, bad
        assert (last.code, list(last.response.packed_results)) == (0, [b'{"ok":true}'])
        forwarded = "" if member == leader else leader_address
        assert first.leader == last.leader == forwarded, (member, first, last)
        assert (read(cluster, f"s{n}a"), read(cluster, f"s{n}b")) == ("1", "2")
    all_running(cluster)


def test_a_bad_request_on_a_query_stream_is_refused_alone(cluster: LocalCluster) -> None:
    apply_works(cluster, "qs")
    good = cpb.QueryBatchRequest(requests=[get("qs")], packed=True)
    for member in cluster.members:
        stream = caller_stub(cluster, member).QueryStream(
            iter([good, cpb.QueryBatchRequest(), good]), timeout=10
        )
        first, bad, last = stream
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], bad
        assert "requests: at least one" in bad.message, bad
        for answer in (first, last):
            assert (answer.code, list(answer.response.answers)) == (0, [b'{"value":"ok"}'])
    all_running(cluster)


def test_a_stream_with_more_requests_than_a_member_holds_is_answered_in_order(
    cluster: LocalCluster,
) -> None:
    """A member reads a stream only while it holds fewer than STREAM_IN_FLIGHT unanswered
    requests; past that, the client waits, and every request is still answered."""
    apply_works(cluster, "many")
    sent = 4 * STREAM_IN_FLIGHT
    requests = (
        cpb.QueryBatchRequest(requests=[get("many")] * (n % 3 + 1), packed=True)
        for n in range(sent)
    )
    stream = caller_stub(cluster, leader_of(cluster)).QueryStream(requests, timeout=30)
    answers = [len(answer.response.answers) for answer in stream]
    assert answers == [n % 3 + 1 for n in range(sent)]
    all_running(cluster)


@pytest.mark.parametrize("given", ["0", "-5", "1.5", "soon", ""])
def test_a_stream_with_a_bad_timeout_is_refused_naming_the_key(
    cluster: LocalCluster, given: str
) -> None:
    stub = caller_stub(cluster, next(iter(cluster.members)))
    good = cpb.QueryBatchRequest(requests=[get("qs")], packed=True)
    metadata = ((TIMEOUT_METADATA_KEY, given),)
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.QueryStream(iter([good]), timeout=10, metadata=metadata))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert TIMEOUT_METADATA_KEY in refused.value.details()
    assert "whole number of milliseconds" in refused.value.details()
    all_running(cluster)


def test_command_of_exactly_the_limit_is_accepted(cluster: LocalCluster) -> None:
    padding = LIMIT - len(put("edge", ""))
    payload = put("edge", "e" * padding)
    assert len(payload) == LIMIT
    with blocking_caller(cluster) as c:
        assert json.loads(c.apply(payload)) == {"ok": True}
        with pytest.raises(InvalidArgument, match="RAFT_MAX_COMMAND_BYTES"):
            c.apply(payload + b" ")  # one byte over: refused, and not retried
        assert json.loads(c.apply(put("after-edge", "ok"))) == {"ok": True}
    assert read(cluster, "edge") == "e" * padding


# -- garbage on the wire ---------------------------------------------------------------

GARBAGE = {
    "junk bytes": b"\xff" * 32,
    "truncated length": b"\x0a\xff\xff\xff\xff\x0f",
    "field without value": b"\x08",
}
PATHS = [
    "/tinyraft.v1.Caller/Apply",
    "/tinyraft.v1.Caller/Query",
    "/tinyraft.v1.Admin/AddLearner",
    "/tinyraft.v1.Peer/RequestVote",
]


@pytest.mark.parametrize("path", PATHS)
def test_undecodable_request_is_an_error_and_the_member_keeps_serving(
    cluster: LocalCluster, path: str
) -> None:
    before = membership(cluster)
    for member in cluster.members:
        with cluster.channel(member) as ch:
            raw = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
            for name, garbage in GARBAGE.items():
                r = refused(lambda raw=raw, garbage=garbage: raw(garbage, timeout=5))
                assert r.code != grpc.StatusCode.OK, (member, name, r)
    all_running(cluster)
    assert membership(cluster) == before
    apply_works(cluster, f"after-garbage-{path.rsplit('/', 1)[1]}")


@pytest.mark.parametrize(
    "path",
    [
        "/tinyraft.v1.Peer/Stream",
        "/tinyraft.v1.Caller/ApplyStream",
        "/tinyraft.v1.Caller/QueryStream",
    ],
)
def test_undecodable_stream_ends_and_the_member_keeps_serving(
    cluster: LocalCluster, path: str
) -> None:
    """Garbage on a stream ends that stream without an answer (the member reads
    nothing from it) and disturbs nothing. (gRPC may end it with status OK, not an
    error: harmless, since peers and Callers re-open any stream that ends.)"""
    before = terms(cluster)
    for member in cluster.members:
        with cluster.channel(member) as ch:
            raw = ch.stream_stream(path, request_serializer=None, response_deserializer=None)
            try:
                answers = list(raw(iter([b"\xff" * 32, b"\x08"]), timeout=5))
            except grpc.RpcError as err:
                assert err.code() != grpc.StatusCode.DEADLINE_EXCEEDED, err  # type: ignore[attr-defined]
                answers = []
            assert answers == [], (member, answers)
    all_running(cluster)
    assert terms(cluster) == before
    apply_works(cluster, "after-garbage-stream")


def test_vote_call_without_a_vote_is_refused(cluster: LocalCluster) -> None:
    """A Peer.RequestVote whose message carries no vote (a buggy or newer peer) is
    refused with INVALID_ARGUMENT, and nothing else happens."""
    leader = leader_of(cluster)
    before = terms(cluster)
    cluster_id = cluster.status(leader).cluster_id
    with cluster.channel(leader) as ch:
        stub = ch.unary_unary(
            "/tinyraft.v1.Peer/RequestVote",
            request_serializer=peer_pb2.RaftMessage.SerializeToString,
            response_deserializer=peer_pb2.RaftMessage.FromString,
        )
        r = refused(
            lambda: stub(
                peer_pb2.RaftMessage(term=1, src="n2", dst=leader),  # no body
                timeout=5,
                metadata=(("tinyraft-cluster", cluster_id),),
            )
        )
    assert r.code == grpc.StatusCode.INVALID_ARGUMENT, r
    assert terms(cluster) == before
    all_running(cluster)


# -- malformed commands ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "sequence", "field"), [(0, 1, "client_id"), (5, 0, "sequence")]
)
def test_command_without_session_is_refused_naming_the_field(
    cluster: LocalCluster, client_id: int, sequence: int, field: str
) -> None:
    leader = leader_of(cluster)
    key = f"sessionless-{field}"
    for member in cluster.members:
        r = refused(
            lambda m=member: caller_stub(cluster, m).Apply(
                cpb.ApplyRequest(
                    commands=[
                        command(put(key, "1"), client_id=99, sequence=1),
                        command(put(key, "2"), client_id=client_id, sequence=sequence),
                    ]
                ),
                timeout=5,
            )
        )
        assert r.code == grpc.StatusCode.INVALID_ARGUMENT, (member, r)
        assert field in r.details and "commands[1]" in r.details, r
    assert read(cluster, key) is None  # the valid command of the batch was not applied
    assert leader_of(cluster) == leader


def test_a_command_of_a_forgotten_session_is_refused_in_either_form(
    cluster: LocalCluster,
) -> None:
    """A client id the cluster does not know, whose ack_below says it had answers: its
    session was forgotten, and applying its commands could apply one twice."""
    leader = caller_stub(cluster, leader_of(cluster))
    packed = leader.Apply(
        cpb.ApplyRequest(
            client_id=777001, first_sequence=5, ack_below=5, payloads=[put("forgotten", "1")]
        ),
        timeout=10,
    )
    assert list(packed.packed_results) == [b""]
    assert "session expired" in packed.errors[0], packed
    unpacked = leader.Apply(
        cpb.ApplyRequest(
            commands=[
                cpb.Command(
                    client_id=777002, sequence=3, ack_below=3, payload=put("forgotten", "2")
                )
            ]
        ),
        timeout=10,
    )
    assert "session expired" in unpacked.results[0].error, unpacked
    assert read(cluster, "forgotten") is None


def test_empty_apply_request_is_refused(cluster: LocalCluster) -> None:
    for member in cluster.members:
        r = refused(lambda m=member: caller_stub(cluster, m).Apply(cpb.ApplyRequest(), timeout=5))
        assert r.code == grpc.StatusCode.INVALID_ARGUMENT, (member, r)
        assert "commands" in r.details, r


def test_empty_query_batch_is_refused_and_a_bad_question_fails_alone(
    cluster: LocalCluster,
) -> None:
    for member in cluster.members:
        r = refused(
            lambda m=member: caller_stub(cluster, m).QueryBatch(cpb.QueryBatchRequest(), timeout=5)
        )
        assert r.code == grpc.StatusCode.INVALID_ARGUMENT and "requests" in r.details, (member, r)
    reply = caller_stub(cluster, leader_of(cluster)).QueryBatch(
        cpb.QueryBatchRequest(requests=[get("k"), b"not json", get("k")]), timeout=10
    )
    first, bad, last = reply.results
    assert not first.error and first.answer == last.answer
    assert bad.error and not bad.answer  # the kv Module refused it; the others answered


# -- nonsense admin calls --------------------------------------------------------------


@pytest.mark.parametrize("call", ["Promote", "RemoveMember"])
def test_change_of_unknown_member_is_refused_naming_it(cluster: LocalCluster, call: str) -> None:
    leader = leader_of(cluster)
    stub = admin_stub(cluster, leader)
    r = refused(lambda: getattr(stub, call)(apb.MemberRequest(member_id="nosuch"), timeout=10))
    assert r.code == grpc.StatusCode.FAILED_PRECONDITION, r
    assert "nosuch" in r.details, r
    r = refused(lambda: getattr(stub, call)(apb.MemberRequest(member_id=""), timeout=10))
    assert r.code == grpc.StatusCode.INVALID_ARGUMENT and "member_id" in r.details, r
    assert membership(cluster) == dict.fromkeys(MEMBERS, "voter")


def test_transfer_to_unknown_member_is_refused_naming_it(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    before = terms(cluster)
    r = refused(
        lambda: admin_stub(cluster, leader).TransferLeadership(
            apb.TransferLeadershipRequest(member_id="nosuch"), timeout=10
        )
    )
    assert r.code != grpc.StatusCode.OK and "nosuch" in r.details, r
    assert leader_of(cluster) == leader
    assert terms(cluster) == before


MALFORMED_ADDRESSES = [
    "",
    "nonsense",
    "127.0.0.1:",
    ":7000",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:http",
    "http://127.0.0.1:7000",
    "bad host:7000",
    "::1",  # IPv6 needs brackets: [::1]:7000
]


@pytest.mark.parametrize("address", MALFORMED_ADDRESSES)
def test_add_learner_with_malformed_address_is_refused(cluster: LocalCluster, address: str) -> None:
    leader = leader_of(cluster)
    try:
        r = refused(
            lambda: admin_stub(cluster, leader).AddLearner(
                apb.AddLearnerRequest(member_id="newcomer", address=address), timeout=10
            )
        )
        assert r.code == grpc.StatusCode.INVALID_ARGUMENT and "address" in r.details, r
    finally:
        remove_strays(cluster)


@pytest.mark.parametrize("member_id", ["bad id!", "a/b", "x" * 64, "new\nline"])
def test_add_learner_with_invalid_member_id_is_refused(
    cluster: LocalCluster, member_id: str
) -> None:
    """NODE_ID must match [A-Za-z0-9._-]{1,63}: no member could ever take such an id."""
    leader = leader_of(cluster)
    try:
        r = refused(
            lambda: admin_stub(cluster, leader).AddLearner(
                apb.AddLearnerRequest(member_id=member_id, address="127.0.0.1:9"), timeout=10
            )
        )
        assert r.code == grpc.StatusCode.INVALID_ARGUMENT and "member_id" in r.details, r
    finally:
        remove_strays(cluster)


def test_add_learner_of_a_voter_says_to_remove_it_first(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    for voter in MEMBERS:
        r = refused(
            lambda v=voter: admin_stub(cluster, leader).AddLearner(
                apb.AddLearnerRequest(member_id=v, address="127.0.0.1:9"), timeout=10
            )
        )
        assert r.code == grpc.StatusCode.FAILED_PRECONDITION, r
        assert voter in r.details and "remove it first" in r.details, r
    assert membership(cluster) == dict.fromkeys(MEMBERS, "voter")


def test_promote_of_a_learner_that_never_caught_up_is_refused(cluster: LocalCluster) -> None:
    """Promoting a learner that is not in sync makes it a voter that cannot vote: in a
    one-member cluster that is a cluster without quorum for good (etcd refuses it)."""
    leader = leader_of(cluster)
    stub = admin_stub(cluster, leader)
    try:
        stub.AddLearner(apb.AddLearnerRequest(member_id="ghost", address="127.0.0.1:9"), timeout=10)
        assert membership(cluster)["ghost"] == "learner"
        r = refused(lambda: stub.Promote(apb.MemberRequest(member_id="ghost"), timeout=10))
        # Not yet, rather than never: it may still catch up, so the status is retryable.
        assert r.code == grpc.StatusCode.UNAVAILABLE and "ghost is not caught up" in r.details, r
        assert membership(cluster)["ghost"] == "learner"
    finally:
        remove_strays(cluster)


def test_membership_change_that_must_wait_is_retryable(cluster: LocalCluster) -> None:
    """One membership change at a time: a change asked for while another is in flight
    is refused with a status a client retries (UNAVAILABLE), as its message says
    ("...; retry"), not FAILED_PRECONDITION, which tells a client not to retry."""
    leader = leader_of(cluster)
    stub = admin_stub(cluster, leader)
    try:
        futures = [
            stub.AddLearner.future(
                apb.AddLearnerRequest(member_id=f"concurrent{i}", address=f"127.0.0.1:{i + 1}"),
                timeout=10,
            )
            for i in range(8)  # at once: most arrive while the first is in flight
        ]
        outcomes = []
        for future in futures:
            try:
                future.result()
                outcomes.append("OK")
            except grpc.RpcError as err:
                outcomes.append(f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]
        assert "OK" in outcomes, outcomes
        wrong = [o for o in outcomes if o != "OK" and not o.startswith("UNAVAILABLE")]
        assert not wrong, outcomes
    finally:
        remove_strays(cluster)


def test_admin_calls_on_a_follower_point_at_the_leader(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    leader_address = cluster.members[leader].address
    calls: dict[str, Callable[[admin_pb2_grpc.AdminStub], object]] = {
        "AddLearner": lambda s: s.AddLearner(
            apb.AddLearnerRequest(member_id="newcomer", address="127.0.0.1:9"), timeout=10
        ),
        "Promote": lambda s: s.Promote(apb.MemberRequest(member_id="nosuch"), timeout=10),
        "RemoveMember": lambda s: s.RemoveMember(apb.MemberRequest(member_id="nosuch"), timeout=10),
        "TransferLeadership": lambda s: s.TransferLeadership(
            apb.TransferLeadershipRequest(), timeout=10
        ),
    }
    try:
        for follower in followers(cluster, leader):
            stub = admin_stub(cluster, follower)
            for name, call in calls.items():
                r = refused(lambda call=call, stub=stub: call(stub))
                assert r.code == grpc.StatusCode.UNAVAILABLE, (follower, name, r)
                assert r.leader == leader_address, (follower, name, r)
    finally:
        remove_strays(cluster)
    assert leader_of(cluster) == leader


# -- a Module that fails or hangs ------------------------------------------------------


def test_module_errors_are_results_and_the_cluster_keeps_applying(cluster: LocalCluster) -> None:
    bad = {
        "not JSON": b"\x00\xffnot json",
        "unknown op": json.dumps({"op": "explode", "key": "k"}).encode(),
        "missing field": json.dumps({"op": "put", "key": "k"}).encode(),
        "wrong type": json.dumps({"op": "put", "key": "k", "value": 5}).encode(),
    }
    with blocking_caller(cluster) as c:
        for name, payload in bad.items():
            result = json.loads(c.apply(payload))
            assert set(result) == {"error"}, (name, result)
        # An error in a batch does not stop the rest of the batch, nor later batches.
        results = c.apply_many([bad["unknown op"], put("k", "good")])
        assert "error" in json.loads(results[0]) and json.loads(results[1]) == {"ok": True}
        assert json.loads(c.apply(put("after-errors", "ok"))) == {"ok": True}
        assert json.loads(c.query(get("k"))) == {"value": "good"}
        # A bad query is the client's mistake: INVALID_ARGUMENT, not retried.
        with pytest.raises(InvalidArgument, match="unknown op"):
            c.query(json.dumps({"op": "explode"}).encode())
    # Every replica answers the same for every command, errors included.
    commit = cluster.status(leader_of(cluster)).commit_index
    cluster.wait_for(
        lambda: all(cluster.status(m).applied_index >= commit for m in cluster.members),
        15.0,
        "every member applying the errors",
    )
    all_running(cluster)


def test_hung_module_delays_answers_but_not_raft(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    before = terms(cluster)
    commit_before = cluster.status(leader).commit_index
    seen_terms: set[int] = set()
    sdk_result: dict[str, object] = {}
    cluster.signal(leader, signal.SIGSTOP, module=True)
    try:
        # A write with a deadline fails in time instead of hanging.
        r = refused(
            lambda: caller_stub(cluster, leader).Apply(
                cpb.ApplyRequest(
                    commands=[command(cas("hung-raw", None, "1"), client_id=31337, sequence=1)]
                ),
                timeout=2.0,
            )
        )
        assert r.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), r

        # The SDK retries the same (session, sequence) through the hang.
        def sdk_apply() -> None:
            with blocking_caller(cluster, timeout=2.0, retry=RetryPolicy(deadline=60.0)) as c:
                try:
                    sdk_result["value"] = c.apply(cas("hung-sdk", None, "1"))
                except Exception as exc:
                    sdk_result["error"] = exc

        worker = threading.Thread(target=sdk_apply)
        worker.start()

        def raft_goes_on() -> bool:
            """Every member answers Status; the followers commit and apply both writes
            while the leader's Module (and so its applied index) is stuck."""
            statuses = {m: cluster.status(m, timeout=2.0) for m in cluster.members}
            seen_terms.update(s.term for s in statuses.values())
            return (
                all(
                    statuses[f].applied_index >= commit_before + 2
                    for f in followers(cluster, leader)
                )
                and statuses[leader].applied_index < statuses[leader].commit_index
            )

        cluster.wait_for(raft_goes_on, 15.0, "followers applying while the leader's Module hangs")
        assert seen_terms == set(before.values()), "the hung Module caused an election"
        assert worker.is_alive(), f"the SDK's apply returned during the hang: {sdk_result}"
    finally:
        cluster.signal(leader, signal.SIGCONT, module=True)
    worker.join(60)
    assert not worker.is_alive()
    # Exactly once: a second application of the create-if-absent would answer ok:false.
    assert sdk_result == {"value": b'{"ok":true,"value":"1"}'}
    assert terms(cluster) == before and leader_of(cluster) == leader
    with blocking_caller(cluster) as c:
        assert json.loads(c.apply(cas("hung-raw", None, "2"))) == {"ok": False, "value": "1"}
        assert json.loads(c.apply(cas("hung-sdk", None, "2"))) == {"ok": False, "value": "1"}
        assert json.loads(c.apply(put("after-hang", "ok"))) == {"ok": True}
    # The write whose caller gave up was applied once; its retry gets the first result.
    retry = caller_stub(cluster, leader).Apply(
        cpb.ApplyRequest(
            commands=[command(cas("hung-raw", None, "1"), client_id=31337, sequence=1)]
        ),
        timeout=10,
    )
    assert retry.results[0].result == b'{"ok":true,"value":"1"}'
    all_running(cluster)


RETRYABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}  # the Caller SDK's


def test_member_whose_module_is_not_up_yet_answers_retryably(tmp_path: Path) -> None:
    """A sidecar waits for its Module at start-up. Meanwhile every call gets a status the
    Caller SDK retries (UNAVAILABLE...), not UNKNOWN, which it does not: a Caller's write
    sent then is applied once the Module is up."""
    with LocalCluster(tmp_path / "cluster0") as one:
        one.members["n1"] = LocalMember("n1", tmp_path / "cluster0" / "n1" / "data")
        one.start_sidecar("n1", bootstrap=True)  # no Module yet
        with one.channel("n1") as ch:
            health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
            )
            caller = caller_pb2_grpc.CallerStub(ch)
            outcomes = {}
            for name, call in {
                "Caller.Apply": lambda: caller.Apply(
                    cpb.ApplyRequest(commands=[command(put("early", "1"))]), timeout=3
                ),
                "Caller.Query": lambda: caller.Query(cpb.QueryRequest(request=get("k")), timeout=3),
                "Caller.Status": lambda: caller.Status(cpb.StatusRequest(), timeout=3),
                "Admin.Status": lambda: admin_pb2_grpc.AdminStub(ch).Status(
                    apb.AdminStatusRequest(), timeout=3
                ),
            }.items():
                try:
                    call()
                    outcomes[name] = "OK"
                except grpc.RpcError as err:
                    outcomes[name] = f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
            ready = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="tinyraft.ready"), timeout=5
            )
            assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
        sdk_result: dict[str, object] = {}

        def sdk_apply() -> None:
            with BlockingCaller(
                one.members["n1"].address, timeout=2.0, retry=RetryPolicy(deadline=60.0)
            ) as c:
                try:
                    sdk_result["value"] = c.apply(put("early-sdk", "1"))
                except Exception as exc:
                    sdk_result["error"] = exc

        worker = threading.Thread(target=sdk_apply)
        worker.start()
        one.start_module("n1")
        worker.join(90)
        one.wait_for(lambda: one.leader() == "n1", 30.0, "n1 leading once its Module is up")
        apply_works(one, "late")
        wrong = {
            k: v
            for k, v in outcomes.items()
            if not (v == "OK" and "Status" in k) and v.split(":")[0] not in RETRYABLE
        }
        assert not wrong, f"calls answered with a status the Caller SDK does not retry: {wrong}"
        assert sdk_result == {"value": b'{"ok":true}'}


# -- bad configuration and data dirs ---------------------------------------------------

CONFIG_VARS = {env for env, *_ in reference_table()} | {"TINYRAFT_TEST_FAULT_FILE"}


def sidecar(env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `tinyraft sidecar` with exactly these settings (none inherited)."""
    clean = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    return subprocess.run(
        [sys.executable, "-m", "tinyraft.cli", "sidecar"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def base_env(data_dir: Path) -> dict[str, str]:
    return {
        "NODE_ID": "n1",
        "NODE_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "RAFT_DATA_DIR": str(data_dir),
        "MODULE_ADDR": f"127.0.0.1:{free_port()}",
        "METRICS_ADDR": "",
    }


BAD_SETTINGS = [
    ({"NODE_LISTEN_ADDR": "nonsense"}, "NODE_LISTEN_ADDR"),
    ({"RAFT_ELECTION_MS": "1"}, "RAFT_ELECTION_MS"),
    ({"RAFT_HEARTBEAT_MS": "0"}, "RAFT_HEARTBEAT_MS"),
    ({"NODE_ID": "bad id!"}, "NODE_ID"),
    ({"RAFT_MAX_COMMAND_BYTES": "lots"}, "RAFT_MAX_COMMAND_BYTES"),
    ({"RAFT_MAX_COMMAND_BYTES": "65MiB"}, "RAFT_MAX_COMMAND_BYTES"),
    ({"RAFT_BOOTSTRAP": "maybe"}, "RAFT_BOOTSTRAP"),
    ({"RAFT_JOIN": "a,b"}, "RAFT_JOIN"),
    ({"RAFT_BOOTSTRAP": "true", "RAFT_JOIN": "127.0.0.1:7000"}, "RAFT_JOIN"),
    ({"MODULE_ADDR": "localhost"}, "MODULE_ADDR"),
    ({"NODE_LISTEN_ADDR": "0.0.0.0:7000"}, "NODE_ADVERTISE_ADDR"),
    ({"TLS_CERT_FILE": "/etc/hostname"}, "TLS_KEY_FILE"),
    (
        {"TLS_CERT_FILE": "/nonexistent.crt", "TLS_KEY_FILE": "/x.key", "TLS_CA_FILE": "/x.ca"},
        "TLS_CERT_FILE",
    ),
    ({"SHUTDOWN_TIMEOUT_S": "-1"}, "SHUTDOWN_TIMEOUT_S"),
]


@pytest.mark.parametrize(
    ("setting", "variable"), BAD_SETTINGS, ids=[" ".join(s) for s, _ in BAD_SETTINGS]
)
def test_bad_setting_exits_2_with_one_line_naming_it(
    tmp_path: Path, setting: dict[str, str], variable: str
) -> None:
    data_dir = tmp_path / "data"
    result = sidecar({**base_env(data_dir), **setting})
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tinyraft sidecar: ") and f"{variable} (" in lines[0], lines[0]
    assert not data_dir.exists(), "a member with a bad configuration touched its data dir"


def test_listen_address_in_use_exits_2_naming_it(tmp_path: Path) -> None:
    env = base_env(tmp_path / "data")
    host, port = env["NODE_LISTEN_ADDR"].rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        result = sidecar(env)
    assert result.returncode == 2, result
    last = result.stderr.splitlines()[-1]
    assert last.startswith("tinyraft sidecar: NODE_LISTEN_ADDR ") and port in last, last


def _pki(tmp_path: Path) -> dict[str, Path]:
    ca = CertAuthority.create(tmp_path / "pki", "ca")
    member, other = ca.issue("member"), ca.issue("other")
    junk = tmp_path / "pki" / "junk.pem"
    junk.write_text("this is not PEM\n")
    return {
        "ca": ca.cert_file,
        "cert": member.cert,
        "key": member.key,
        "other-key": other.key,
        "junk": junk,
    }


@pytest.mark.parametrize(
    ("files", "variables"),
    [
        (("junk", "key", "ca"), ["TLS_CERT_FILE"]),
        (("cert", "junk", "ca"), ["TLS_KEY_FILE"]),
        (("cert", "key", "junk"), ["TLS_CA_FILE"]),
        (("cert", "other-key", "ca"), ["TLS_KEY_FILE", "TLS_CERT_FILE"]),
    ],
    ids=["cert-not-pem", "key-not-pem", "ca-not-pem", "key-of-another-cert"],
)
def test_unusable_tls_files_exit_2_naming_the_file(
    tmp_path: Path, files: tuple[str, str, str], variables: list[str]
) -> None:
    """Readable files that are not a usable certificate/key: the member must say which
    setting is wrong, not blame the listen address."""
    pki = _pki(tmp_path)
    cert, key, ca = (pki[f] for f in files)
    env = {
        **base_env(tmp_path / "data"),
        "TLS_CERT_FILE": str(cert),
        "TLS_KEY_FILE": str(key),
        "TLS_CA_FILE": str(ca),
    }
    result = sidecar(env)
    assert result.returncode == 2, result
    last = result.stderr.splitlines()[-1]
    assert last.startswith("tinyraft sidecar: "), last
    assert "NODE_LISTEN_ADDR" not in last, last
    assert any(v in last for v in variables), last


# -- data dirs and bootstrap (these stop members of the shared cluster: keep them last) --


def test_data_dir_in_use_or_of_another_member_is_refused(cluster: LocalCluster) -> None:
    leader = leader_of(cluster)
    victim = followers(cluster, leader)[0]
    member = cluster.members[victim]
    env = {**base_env(member.data_dir), "NODE_ID": victim, "MODULE_ADDR": member.module_address}

    # While the member runs, a second process on its data dir is refused.
    result = sidecar(env)
    assert result.returncode != 0, result
    assert str(member.data_dir) in result.stderr and "in use" in result.stderr, result.stderr

    assert cluster.stop(victim) == 0
    result = sidecar({**env, "NODE_ID": "other"})
    assert result.returncode != 0, result
    message = result.stderr.strip().splitlines()[-1]
    assert str(member.data_dir) in message, message
    assert repr(victim) in message and "'other'" in message, message
    assert "remove" in message and "own data dir" in message, message

    # The refusal changed nothing: the member restarts on its dir and catches up.
    with blocking_caller(cluster) as c:
        c.apply(put("while-stopped", "1"))
    cluster.restart(victim)
    commit = cluster.status(leader_of(cluster)).commit_index
    cluster.wait_for(
        lambda: (s := running_status(cluster, victim)) is not None and s.applied_index >= commit,
        30.0,
        f"{victim} catching up after the restart",
    )
    assert membership(cluster) == dict.fromkeys(MEMBERS, "voter")


def test_existing_data_dir_is_never_bootstrapped_again(cluster: LocalCluster) -> None:
    # The Admin API refuses to bootstrap any running member.
    for member in cluster.members:
        r = refused(
            lambda m=member: admin_stub(cluster, m).Bootstrap(apb.BootstrapRequest(), timeout=5)
        )
        assert r.code == grpc.StatusCode.FAILED_PRECONDITION, (member, r)
        assert "never bootstrapped again" in r.details, r

    # n1 was started with RAFT_BOOTSTRAP=true (as pod 0 of a StatefulSet always is):
    # stopped and started again so, it rejoins its cluster rather than starting one.
    before = cluster.status("n1")
    assert cluster.stop("n1") == 0
    leader = leader_of(cluster)
    with blocking_caller(cluster) as c:
        c.apply(put("while-n1-was-down", "1"))
    commit = cluster.status(leader).commit_index
    cluster.start_sidecar("n1", bootstrap=True)

    def rejoined() -> apb.AdminStatusResponse | None:
        s = running_status(cluster, "n1")
        return s if s is not None and s.leader_id and s.applied_index >= commit else None

    after = cluster.wait_for(rejoined, 30.0, "n1 back in its cluster and caught up")
    assert after.cluster_id == before.cluster_id
    assert after.term >= before.term and after.commit_index >= commit > before.commit_index
    assert {cluster.status(m).cluster_id for m in cluster.members} == {before.cluster_id}
    assert membership(cluster) == dict.fromkeys(MEMBERS, "voter")
    stale = caller_stub(cluster, "n1").Query(
        cpb.QueryRequest(request=get("while-n1-was-down"), consistency=cpb.CONSISTENCY_STALE),
        timeout=5,
    )
    assert json.loads(stale.answer) == {"value": "1"}
    log = (cluster.base_dir / "n1" / "n1.sidecar.log").read_text()
    assert "RAFT_BOOTSTRAP ignored" in log
    assert log.count("bootstrapped a new cluster") == 1
    apply_works(cluster, "after-rebootstrap")


def log_once_stopped(cluster: LocalCluster, member: str) -> str:
    """The member's sidecar log, once its process has exited by itself."""
    sidecar = cluster.members[member].sidecar
    assert sidecar is not None
    cluster.wait_for(lambda: sidecar.poll() is not None, 20.0, f"{member} to stop")
    return (cluster.base_dir / member / f"{member}.sidecar.log").read_text(errors="replace")


def test_a_member_that_cannot_commit_a_snapshot_stops_saying_why(tmp_path: Path) -> None:
    """A snapshot is made durable beside the applies that follow it. If that fails
    (here the snapshots dir refuses renames: `chattr +a`), the member stops with the
    reason in its log, as when the snapshot was taken inline; it does not go on
    believing in a snapshot that is not on disk."""
    cluster = formed_cluster(tmp_path, 1, env={"RAFT_SNAPSHOT_ENTRIES": "5"})
    snapshots = cluster.members["n1"].data_dir / "snapshots"
    try:
        if subprocess.run(["chattr", "+a", str(snapshots)], capture_output=True).returncode:
            pytest.skip("chattr +a is not available on this filesystem")
        with blocking_caller(cluster, retry=RetryPolicy(max_attempts=2, deadline=2)) as caller:
            for n in range(10):  # one entry each: the 5th is due a snapshot
                try:
                    caller.apply(put("k", str(n)))
                except Exception:
                    break  # the member has stopped
        log = log_once_stopped(cluster, "n1")
        assert "the snapshot failed; stopping this member" in log, log[-2000:]
        assert "Operation not permitted" in log, log[-2000:]
    finally:
        subprocess.run(["chattr", "-a", str(snapshots)], capture_output=True)
        cluster.close()


def test_a_member_that_cannot_apply_its_log_stops_saying_why(tmp_path: Path) -> None:
    """A committed entry the applier cannot read (here sent by a peer claiming a newer
    term; in life, a build that writes a newer format) stops the member with the
    reason in its log. Before, the applier's task died unseen: the member went on
    voting and acknowledging, and every caller waiting on an apply hung."""
    cluster = formed_cluster(tmp_path, 1)
    try:
        status = cluster.status("n1")
        garbage = peer_pb2.Entry(
            index=status.last_index + 1,
            term=status.term + 1,
            kind=peer_pb2.ENTRY_KIND_NORMAL,
            data=b"\xff\xff\xff\xff\x01\x00\x00\x00not a run",
        )
        append = peer_pb2.RaftMessage(
            term=status.term + 1,
            src="n9",
            dst="n1",
            append=peer_pb2.AppendEntries(
                prev_index=status.last_index,
                prev_term=status.term,
                entries=[garbage],
                commit=garbage.index,
            ),
        )
        with cluster.channel("n1") as ch:
            stream = ch.stream_stream(
                "/tinyraft.v1.Peer/Stream",
                request_serializer=peer_pb2.MessageBatch.SerializeToString,
                response_deserializer=peer_pb2.MessageBatch.FromString,
            )
            batch = peer_pb2.MessageBatch(cluster_id=status.cluster_id, messages=[append])
            with contextlib.suppress(grpc.RpcError):  # the member goes away mid-stream
                for _ in stream(iter([batch]), timeout=20):
                    pass
        log = log_once_stopped(cluster, "n1")
        assert "the applier failed; stopping this member" in log, log[-2000:]
        assert "malformed command batch" in log, log[-2000:]
    finally:
        cluster.close()
