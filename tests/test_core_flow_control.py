"""Flow control: probing then pipelining, the in-flight window, message size, the
uncommitted-bytes limit, and the leader's parallel disk write (thesis §10.2.1)."""

from __future__ import annotations

import pytest

from core_script import Cluster
from tinyraft.core import AppendEntries, RequestVote, TooManyUncommitted, VoteResponse


def elect(**options: object) -> Cluster:
    c = Cluster.bootstrap("a b c", **options)
    c.campaign("a")
    c.stabilize()
    return c


def appends(c: Cluster, dst: str) -> list[AppendEntries]:
    return [m for m in c.msgs(src="a", dst=dst, kinds=AppendEntries) if m.entries]


def test_a_new_leader_probes_with_one_append_then_pipelines() -> None:
    c = Cluster.bootstrap("a b c")
    c.campaign("a")
    c.deliver(kinds=RequestVote)
    c.deliver(kinds=VoteResponse)
    assert len(appends(c, "b")) == 1  # the probe, carrying the no-op
    for data in (b"x", b"y"):
        c.propose("a", data)
        c.process("a")
    assert len(appends(c, "b")) == 1  # probing: nothing more until b answers
    c.deliver(dst="b")
    c.deliver(src="b")  # b matched: a streams what b lacks
    assert [e.data for m in appends(c, "b") for e in m.entries] == [b"x", b"y"]
    for data in (b"z1", b"z2", b"z3"):
        c.propose("a", data)
        c.process("a")
    assert len(appends(c, "b")) == 4  # replicating: one append per batch, no waiting
    c.stabilize()
    c.heartbeat()
    assert c.applied("b") == [b"x", b"y", b"z1", b"z2", b"z3"]


def test_no_more_than_max_inflight_appends_go_to_a_silent_follower() -> None:
    c = elect(max_inflight=3)
    for i in range(10):
        c.propose("a", b"%d" % i)
        c.process("a")
    c.tick("a", 5)  # heartbeats go out, but b never answers them
    assert len(appends(c, "b")) == 3
    c.drop(dst="b")
    c.stabilize()
    assert c.applied("a") == [b"%d" % i for i in range(10)]  # c and a form the quorum


def test_appends_carry_at_most_max_msg_bytes_of_data() -> None:
    c = Cluster.bootstrap("a b c", max_msg_bytes=100)
    c.campaign("a")
    c.deliver(kinds=RequestVote)
    c.deliver(kinds=VoteResponse)
    c.drop(dst="c")  # c misses the probe: a waits for c's answer before sending more
    for _ in range(20):
        c.propose("a", bytes(30))
    c.propose("a", bytes(500))  # larger than a message: it still goes, alone
    c.stabilize()
    assert c.commit("a") == c.last_index("a") and c.applied("c") == []
    c.run(5)  # a heartbeat answer from c restarts the probe; c catches up
    sent = c.history(src="a", dst="c", kinds=AppendEntries)
    sizes = [[len(e.data) for e in m.entries] for m in sent]
    assert [s for s in sizes if sum(s) > 100] == [[500]]
    assert max(sum(s) for s in sizes if s != [500]) == 90  # batched: 3 of 30 bytes fit
    assert c.applied("c") == c.applied("a") and len(c.applied("c")) == 21


def test_proposals_beyond_max_uncommitted_bytes_are_refused_and_not_appended() -> None:
    c = elect(max_uncommitted_bytes=100)
    c.isolate("b", "c")
    c.propose("a", bytes(60))
    last = c.last_index("a")
    with pytest.raises(TooManyUncommitted):
        c.propose("a", bytes(60))
    assert c.last_index("a") == last
    c.propose("a", bytes(40))  # exactly at the limit is fine
    c.heal()
    c.run(3)
    assert c.commit("a") == c.last_index("a")
    c.propose("a", bytes(60))  # committed bytes no longer count


def test_the_leader_counts_its_own_entry_only_once_it_is_persisted() -> None:
    c = elect()
    c.isolate("c")  # so a and b must both have it
    index = c.propose("a", b"x")
    rd = c.ready("a")  # a's disk write starts ...
    assert [m.dst for m in rd.messages_now if isinstance(m, AppendEntries)] == ["b", "c"]
    c.deliver(dst="b")  # ... while b already gets, persists and acknowledges x
    c.deliver(src="b")
    assert c.raft("a").progress["b"].match == index
    assert c.commit("a") < index  # b alone is not a quorum of three
    c.process("a")  # a's own write finishes
    assert c.commit("a") == index
    c.process("a")
    assert c.applied("a") == [b"x"]


def test_a_follower_whose_appends_were_lost_catches_up_without_new_proposals() -> None:
    c = elect()
    c.isolate("c")
    for i in range(5):
        c.propose("a", b"%d" % i)
        c.process("a")
    c.stabilize()
    c.heal()
    c.run(50)  # fifty heartbeat rounds on a working network
    assert c.last_index("c") == c.last_index("a")
    assert c.applied("c") == [b"%d" % i for i in range(5)]


def test_a_new_leader_keeps_the_uncommitted_limit() -> None:
    c = Cluster.bootstrap("a b c", max_uncommitted_bytes=100, check_quorum=False)
    c.campaign("a")
    c.stabilize()
    c.propose("a", bytes(100))
    c.process("a")
    c.deliver(src="a")
    c.drop()  # every member has it; none knows it is committed
    c.crash("a")
    c.campaign("b")
    c.deliver(kinds=RequestVote)
    c.deliver(kinds=VoteResponse)  # b leads term 3; its no-op is on the way to c
    c.propose("b", bytes(90))
    c.process("b")
    c.deliver(dst="c", kinds=AppendEntries)
    c.deliver(dst="b")  # the no-op (and the 100 old bytes) commit; the 90 do not
    assert c.commit("b") < c.last_index("b")
    with pytest.raises(TooManyUncommitted):
        c.propose("b", bytes(100))  # 190 uncommitted bytes would exceed the limit
