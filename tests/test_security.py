"""Mutual TLS on real sidecar processes: with TLS on, every service on a member's port
(Caller, Admin, Peer, health, reflection) serves only clients holding a certificate
from the cluster's CA. A client without one, or with one from another CA, gets
nothing done, and a member holding such a certificate can neither join nor disturb
the cluster's elections.

One 3-member cluster is shared by the module's tests: every test leaves it as it
found it (refused calls change nothing; the intruding member is stopped)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tests.shared_cluster import formed_cluster

from certs import CertAuthority
from tinyraft.caller import BlockingCaller, RetryPolicy
from tinyraft.local import LocalCluster, TlsFiles
from tinyraft.v1 import admin_pb2 as apb
from tinyraft.v1 import admin_pb2_grpc, caller_pb2_grpc, peer_pb2, peer_pb2_grpc
from tinyraft.v1 import caller_pb2 as cpb

CALL_TIMEOUT = 5.0


class Pki:
    def __init__(self, root: Path) -> None:
        self.ca = CertAuthority.create(root / "cluster-ca", "cluster-ca")
        self.member = self.ca.issue("member")  # every sidecar's certificate
        self.client = self.ca.issue("client")  # a properly certified client
        self.other_ca = CertAuthority.create(root / "other-ca", "other-ca")
        # Another CA's leaf, held together with the cluster's (public) CA certificate:
        # the holder can check the members' certificates, but should not pass theirs.
        other = self.other_ca.issue("intruder")
        self.intruder = TlsFiles(ca=self.ca.cert_file, cert=other.cert, key=other.key)
        self.expired = self.ca.issue("expired", expired=True)  # the right CA, out of date


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[LocalCluster]:
    c = formed_cluster(tmp_path_factory.mktemp("tls"), 3, tls=pki.member)
    try:
        yield c
    finally:
        c.close()


# -- helpers ---------------------------------------------------------------------------


def secure_channel(address: str, tls: TlsFiles | None, ca: Path) -> grpc.Channel:
    """A TLS channel trusting CA, presenting TLS's certificate (None: no certificate)."""
    creds = grpc.ssl_channel_credentials(
        ca.read_bytes(),
        tls.key.read_bytes() if tls else None,
        tls.cert.read_bytes() if tls else None,
    )
    return grpc.secure_channel(address, creds)


def caller(cluster: LocalCluster, pki: Pki) -> BlockingCaller:
    return BlockingCaller(
        cluster.addresses(),
        tls_ca=pki.ca.cert_file,
        tls_cert=pki.client.cert,
        tls_key=pki.client.key,
        retry=RetryPolicy(deadline=20.0),
    )


def put(key: str, value: str) -> bytes:
    return json.dumps({"op": "put", "key": key, "value": value}).encode()


def get(key: str) -> bytes:
    return json.dumps({"op": "get", "key": key}).encode()


def terms(cluster: LocalCluster) -> dict[str, int]:
    return {m: cluster.status(m).term for m in cluster.members}


def leader_status(cluster: LocalCluster) -> apb.AdminStatusResponse:
    leader = cluster.wait_for(cluster.leader, 10.0, "a leader")
    return cluster.status(leader)


def cluster_metadata(cluster: LocalCluster) -> tuple[tuple[str, str]]:
    return (("tinyraft-cluster", cluster.status("n1").cluster_id),)


def attack_calls(cluster: LocalCluster, tag: str) -> dict[str, Callable[[grpc.Channel], object]]:
    """One call per service; each would change or reveal something if let through."""
    high_term = max(terms(cluster).values()) + 1000
    vote = peer_pb2.RaftMessage(
        term=high_term,
        src=f"intruder-{tag}",
        dst="n1",
        request_vote=peer_pb2.RequestVote(last_index=10**9, last_term=high_term, transfer=True),
    )
    batch = peer_pb2.MessageBatch(
        cluster_id=cluster.status("n1").cluster_id,
        messages=[
            peer_pb2.RaftMessage(
                term=high_term,
                src=f"intruder-{tag}",
                dst="n1",
                heartbeat=peer_pb2.Heartbeat(commit=10**9),
            )
        ],
    )
    metadata = cluster_metadata(cluster)

    def stream(ch: grpc.Channel) -> object:
        return list(peer_pb2_grpc.PeerStub(ch).Stream(iter([batch]), timeout=CALL_TIMEOUT))

    def reflect(ch: grpc.Channel) -> object:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        return list(stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT))

    return {
        "Caller.Apply": lambda ch: caller_pb2_grpc.CallerStub(ch).Apply(
            cpb.ApplyRequest(
                commands=[cpb.Command(client_id=7, sequence=1, payload=put(f"refused-{tag}", "x"))]
            ),
            timeout=CALL_TIMEOUT,
        ),
        "Caller.Query": lambda ch: caller_pb2_grpc.CallerStub(ch).Query(
            cpb.QueryRequest(request=get("anything")), timeout=CALL_TIMEOUT
        ),
        "Caller.QueryBatch": lambda ch: caller_pb2_grpc.CallerStub(ch).QueryBatch(
            cpb.QueryBatchRequest(requests=[get("anything")]), timeout=CALL_TIMEOUT
        ),
        "Caller.Status": lambda ch: caller_pb2_grpc.CallerStub(ch).Status(
            cpb.StatusRequest(), timeout=CALL_TIMEOUT
        ),
        "Admin.Status": lambda ch: admin_pb2_grpc.AdminStub(ch).Status(
            apb.AdminStatusRequest(), timeout=CALL_TIMEOUT
        ),
        "Admin.AddLearner": lambda ch: admin_pb2_grpc.AdminStub(ch).AddLearner(
            apb.AddLearnerRequest(member_id=f"intruder-{tag}", address="127.0.0.1:9"),
            timeout=CALL_TIMEOUT,
        ),
        "Admin.TransferLeadership": lambda ch: admin_pb2_grpc.AdminStub(ch).TransferLeadership(
            apb.TransferLeadershipRequest(), timeout=CALL_TIMEOUT
        ),
        "Peer.RequestVote": lambda ch: peer_pb2_grpc.PeerStub(ch).RequestVote(
            vote, timeout=CALL_TIMEOUT, metadata=metadata
        ),
        "Peer.Stream": stream,
        "health.Check": lambda ch: health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
        ),
        "health.Check(tinyraft.ready)": lambda ch: health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="tinyraft.ready"), timeout=CALL_TIMEOUT
        ),
        "reflection": reflect,
    }


def outcome(call: Callable[[grpc.Channel], object], ch: grpc.Channel) -> str:
    try:
        call(ch)
    except grpc.RpcError as err:
        return f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
    return "OK"


# -- the tests -------------------------------------------------------------------------


def test_cluster_forms_with_mutual_tls(cluster: LocalCluster, pki: Pki) -> None:
    status = leader_status(cluster)
    assert {(p.member_id, p.suffrage) for p in status.members} == {
        ("n1", "voter"),
        ("n2", "voter"),
        ("n3", "voter"),
    }
    assert len({cluster.status(m).cluster_id for m in cluster.members}) == 1
    # A properly certified client is served by every member (followers forward).
    with caller(cluster, pki) as c:
        assert json.loads(c.apply(put("formed", "yes"))) == {"ok": True}
        assert json.loads(c.query(get("formed"))) == {"value": "yes"}
    for m in cluster.members:
        with secure_channel(cluster.members[m].address, pki.client, pki.ca.cert_file) as ch:
            check = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING


CLIENTS = {
    "plaintext": lambda address, pki: grpc.insecure_channel(address),
    "tls-without-client-certificate": lambda address, pki: secure_channel(
        address, None, pki.ca.cert_file
    ),
    "certificate-from-another-ca": lambda address, pki: secure_channel(
        address, pki.intruder, pki.ca.cert_file
    ),
    "expired-certificate": lambda address, pki: secure_channel(
        address, pki.expired, pki.ca.cert_file
    ),
}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_uncertified_client_is_refused_by_every_service(
    cluster: LocalCluster, pki: Pki, client: str
) -> None:
    before = terms(cluster)
    calls = attack_calls(cluster, client)
    outcomes = {}
    for member in cluster.members:
        with CLIENTS[client](cluster.members[member].address, pki) as ch:
            for name, call in calls.items():
                outcomes[f"{member} {name}"] = outcome(call, ch)
    # gRPC reports a connection refused in the TLS handshake as UNAVAILABLE: the
    # request never reached a service.
    not_refused = {
        k: v
        for k, v in outcomes.items()
        if not (v.startswith("UNAVAILABLE") and "failed to connect" in v)
    }
    assert not not_refused, f"calls not refused in the handshake: {not_refused}"

    # Nothing the refused calls asked for happened, and the cluster works as before.
    with caller(cluster, pki) as c:
        assert json.loads(c.query(get(f"refused-{client}"))) == {"value": None}
        assert json.loads(c.apply(put(f"after-{client}", "ok"))) == {"ok": True}
        assert json.loads(c.query(get(f"after-{client}"))) == {"value": "ok"}
    status = leader_status(cluster)
    assert sorted(p.member_id for p in status.members) == ["n1", "n2", "n3"]
    assert terms(cluster) == before, "a refused vote request or heartbeat changed a term"


def test_certified_client_passes_the_handshake(cluster: LocalCluster, pki: Pki) -> None:
    """The control for the test above: the same Peer call from a certified client gets
    past TLS and is judged by the service (so the refusals above come from TLS)."""
    with secure_channel(cluster.members["n1"].address, pki.client, pki.ca.cert_file) as ch:
        stub = peer_pb2_grpc.PeerStub(ch)
        # no cluster metadata: refused by the service, not by the handshake
        with pytest.raises(grpc.RpcError) as err:
            stub.RequestVote(peer_pb2.RaftMessage(), timeout=CALL_TIMEOUT)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_member_with_another_cas_certificate_cannot_join_or_disturb(
    cluster: LocalCluster, pki: Pki, tmp_path: Path
) -> None:
    leader = cluster.wait_for(cluster.leader, 10.0, "a leader")
    before = terms(cluster)
    commit_before = cluster.status(leader).commit_index

    def handshake_failures() -> int:
        return sum(
            (cluster.base_dir / m / f"{m}.sidecar.log")
            .read_text(errors="replace")
            .count("CERTIFICATE_VERIFY_FAILED")
            for m in cluster.members
        )

    failures_before = handshake_failures()
    # Its own "cluster" of one: same machinery, the intruder's certificate.
    rogue = LocalCluster(tmp_path / "rogue", tls=pki.intruder)
    try:
        rogue.add("intruder", join=cluster.addresses())
        log = tmp_path / "rogue" / "intruder" / "intruder.sidecar.log"
        seen_members: set[str] = set()
        seen_terms: set[int] = set()

        def attempts() -> bool:
            """Watch the cluster while the intruder keeps asking to be added."""
            for m in cluster.members:
                s = cluster.status(m)
                seen_terms.add(s.term)
                seen_members.update(p.member_id for p in s.members)
            text = log.read_text(errors="replace") if log.exists() else ""
            return sum("AddLearner at" in line for line in text.splitlines()) >= 6

        cluster.wait_for(attempts, 30.0, "6 refused AddLearner attempts by the intruder")
        assert rogue.members["intruder"].sidecar.poll() is None  # it is still trying
        assert seen_members == {"n1", "n2", "n3"}
        assert seen_terms == set(before.values())
        assert terms(cluster) == before
        text = log.read_text(errors="replace")
        assert "joined cluster" not in text
        refusals = [line for line in text.splitlines() if "AddLearner at" in line]
        assert all("failed to connect" in line for line in refusals), refusals
        # The members say why, for whoever reads their logs: gRPC logs each refused
        # handshake ("CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate").
        assert handshake_failures() > failures_before
        # And it is not serving as part of the cluster: it never learned a cluster id.
        # (it serves clients of the cluster's CA with a certificate of the other CA)
        with secure_channel(
            rogue.members["intruder"].address, pki.client, pki.other_ca.cert_file
        ) as ch:
            s = admin_pb2_grpc.AdminStub(ch).Status(apb.AdminStatusRequest(), timeout=5)
        assert (s.cluster_id, s.role) == ("", "joining")
    finally:
        rogue.close()
    # The cluster still works, with the same members and term.
    with caller(cluster, pki) as c:
        assert json.loads(c.apply(put("after-intruder", "ok"))) == {"ok": True}
    assert cluster.status(leader).commit_index > commit_before
    assert sorted(p.member_id for p in leader_status(cluster).members) == ["n1", "n2", "n3"]
    assert terms(cluster) == before
