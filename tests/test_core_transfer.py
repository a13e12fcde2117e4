"""Leadership transfer (thesis §3.10): TimeoutNow to an up-to-date target, catching a
lagging target up first, refusing proposals meanwhile, and giving up after a timeout."""

from __future__ import annotations

import pytest

from core_script import Cluster
from tinyraft.core import (
    AppendEntries,
    NotLeader,
    ReadState,
    Role,
    TimeoutNow,
    TransferInProgress,
)

E = 10


def elect(**options: object) -> Cluster:
    c = Cluster.bootstrap("a b c", **options)
    c.campaign("a")
    c.stabilize()
    c.run(2)
    return c


def test_transfer_to_an_up_to_date_follower() -> None:
    c = elect()
    c.raft("a").transfer_leadership("b")
    c.process("a")
    (timeout_now,) = c.msgs(kinds=TimeoutNow)
    assert (timeout_now.src, timeout_now.dst, timeout_now.term) == ("a", "b", 2)
    c.stabilize()  # c votes for b although it heard from a just now: it is a transfer
    assert c.leader() == "b" and c.term("b") == 3
    assert c.role("a") is Role.FOLLOWER and c.raft("c").leader == "b"
    c.propose("b", b"x")
    c.stabilize()
    c.heartbeat()
    assert c.applied("a") == [b"x"]


def test_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    c = elect()
    c.propose("a", b"x")
    c.process("a")
    c.deliver(dst="b")
    c.deliver(src="b")  # x is committed by a and b; c's copy is still in flight
    c.raft("a").transfer_leadership("c")
    c.process("a")
    assert c.msgs(kinds=TimeoutNow) == []  # c lacks x: not yet
    with pytest.raises(TransferInProgress):
        c.propose("a", b"y")
    with pytest.raises(TransferInProgress):
        c.raft("a").propose_config("remove", "b")
    c.deliver(dst="c", kinds=AppendEntries)
    c.deliver(src="c")
    assert [m.dst for m in c.msgs(kinds=TimeoutNow)] == ["c"]  # caught up: now
    c.stabilize()
    assert c.leader() == "c" and c.term("c") == 3 and c.applied("c") == [b"x"]


def test_a_transfer_that_cannot_finish_is_abandoned_after_an_election_timeout() -> None:
    c = elect()
    c.isolate("c")
    c.raft("a").transfer_leadership("c")
    c.run(1)
    with pytest.raises(TransferInProgress):
        c.propose("a", b"x")
    c.run(E)
    c.propose("a", b"x")  # given up: a leads on, in the same term
    c.stabilize()
    c.heartbeat()
    assert c.leader() == "a" and c.term("a") == 2 and c.applied("b") == [b"x"]


def test_reads_are_refused_during_a_transfer() -> None:
    c = elect()
    c.isolate("c")
    c.raft("a").transfer_leadership("c")
    c.read("a", 7)
    assert c.reads("a") == [ReadState(7, 0)]  # fails fast: retry on the next leader


def test_transfer_to_a_follower_that_missed_appends_completes() -> None:
    c = elect()
    c.isolate("c")
    for data in (b"x", b"y"):
        c.propose("a", data)
        c.process("a")
    c.stabilize()
    c.heal()
    c.run(2)
    c.raft("a").transfer_leadership("c")
    c.run(E - 1)
    assert c.leader() == "c"


def test_transfer_requests_do_not_keep_a_cut_off_leader_in_office() -> None:
    c = elect()
    c.isolate("a")
    for _ in range(4):  # e.g. an operator retrying a transfer every 8 ticks
        try:
            c.raft("a").transfer_leadership("b")
        except NotLeader:
            break
        c.run(E - 2)
    assert c.role("a") is Role.FOLLOWER  # 32 ticks cut off: check-quorum must have acted
