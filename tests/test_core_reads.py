"""Linearizable reads: ReadIndex (a quorum-confirmed heartbeat round per batch), the
new leader's first commit, partitioned leaders, lease reads, and follower reads."""

from __future__ import annotations

from core_script import Cluster
from tinyraft.core import (
    AppendEntries,
    Heartbeat,
    HeartbeatResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    RequestVote,
    Role,
)

E = 10


def elect(**options: object) -> Cluster:
    c = Cluster.bootstrap("a b c", **options)
    c.campaign("a")
    c.stabilize()
    c.run(2)  # a heartbeat round has been acknowledged: the lease is established
    return c


def applied_index(c: Cluster, name: str) -> int:
    return len(c.members[name].applied)


def test_one_heartbeat_round_confirms_a_whole_batch_of_reads() -> None:
    c = elect()
    beats = len(c.history(kinds=Heartbeat))
    for ctx in (1, 2, 3):
        c.raft("a").read_index(ctx)
    c.process("a")
    assert len(c.history(kinds=Heartbeat)) == beats + 2  # one round: one per follower
    assert c.reads("a") == []
    c.deliver(dst="b", kinds=Heartbeat)
    assert c.reads("a") == []  # b has it, but a has not heard back
    c.deliver(src="b", kinds=HeartbeatResponse)
    commit = c.commit("a")
    assert c.reads("a") == [ReadState(1, commit), ReadState(2, commit), ReadState(3, commit)]


def test_a_new_leader_serves_reads_only_after_committing_in_its_term() -> None:
    c = elect(check_quorum=False)
    x = c.propose("a", b"x")
    c.process("a")
    c.deliver(dst="b")
    c.deliver(dst="c")
    c.deliver(dst="a")  # x is committed and acknowledged to its client ...
    c.drop()  # ... but b and c never hear so
    assert c.commit("a") == x and c.commit("c") < x
    c.crash("a")
    c.campaign("c")
    c.deliver(kinds=RequestVote)
    c.deliver(dst="c")
    assert c.role("c") is Role.LEADER
    c.read("c", 7)
    assert c.reads("c") == []  # its commit index (before x) is not known to be current
    c.stabilize()
    (rs,) = c.reads("c")
    assert rs.index >= x  # so the read sees x
    assert applied_index(c, "c") >= rs.index and c.applied("c") == [b"x"]


def test_a_partitioned_leader_never_releases_a_read() -> None:
    c = elect()
    c.isolate("a")
    c.read("a", 7)
    for _ in range(3 * E):
        c.run(1)
        assert all(rs.index == 0 for rs in c.reads("a"))
    assert c.reads("a") == [ReadState(7, 0)]  # failed when a stepped down: retry elsewhere
    assert c.role("a") is Role.FOLLOWER and c.leader() in ("b", "c")


def test_a_lease_read_is_answered_at_once_while_the_lease_holds() -> None:
    c = elect()
    sent = len(c.sent)
    c.read("a", 1, lease=True)
    assert c.reads("a") == [ReadState(1, c.commit("a"))]
    assert len(c.sent) == sent  # no heartbeat round needed


def test_a_lease_read_is_not_answered_once_cut_off_for_an_election_timeout() -> None:
    c = elect()
    c.isolate("a")
    c.tick("a", E)
    c.read("a", 1, lease=True)
    assert c.reads("a") in ([], [ReadState(1, 0)])


def test_no_lease_read_is_answered_once_another_leader_may_exist() -> None:
    c = elect()
    c.isolate("a")
    for ctx in range(1, 4 * E):
        c.run(1)  # everyone's clock moves; b and c elect a leader when they may
        c.read("a", ctx, lease=True)
        released = [rs for rs in c.reads("a") if rs.context == ctx and rs.index]
        if released:
            assert c.leader() == "a" and c.term("b") == c.term("c") == 2
    assert c.leader() in ("b", "c")
    assert any(rs.index for rs in c.reads("a"))  # it did serve from the lease at first


def test_a_follower_read_gets_the_leader_commit_and_waits_to_apply_it() -> None:
    c = elect()
    x = c.propose("a", b"x")
    c.process("a")
    c.deliver(dst="c")
    c.deliver(src="c")  # x is committed by a and c; b's copy is still in flight
    c.read("b", 9)
    (ask,) = c.msgs(src="b", kinds=ReadIndexRequest)
    assert ask.dst == "a"
    for kind in (ReadIndexRequest, Heartbeat, HeartbeatResponse, ReadIndexResponse):
        c.deliver(kinds=kind)
    (rs,) = c.reads("b")
    assert rs == ReadState(9, x)
    assert applied_index(c, "b") < x  # so b must not serve it yet ...
    c.deliver(dst="b", kinds=AppendEntries)
    c.run(1)
    assert applied_index(c, "b") >= x and c.applied("b") == [b"x"]  # ... until now
