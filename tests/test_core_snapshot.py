"""Snapshots: compaction, InstallSnapshot to a follower behind it, Figure 13's rules 6
(keep a matching suffix) and 7 (discard a conflicting log), and failed transfers."""

from __future__ import annotations

from core_script import Cluster
from tinyraft.core import AppendResponse, InstallSnapshot, Role

E = 10


def elect(**options: object) -> Cluster:
    c = Cluster.bootstrap("a b c", **options)
    c.campaign("a")
    c.stabilize()
    return c


def write(c: Cluster, leader: str, n: int, prefix: bytes = b"x") -> list[bytes]:
    data = [prefix + b"%d" % i for i in range(n)]
    for d in data:
        c.propose(leader, d)
        c.process(leader)
    return data


def snapshots_to(c: Cluster, dst: str) -> list[InstallSnapshot]:
    return c.history(dst=dst, kinds=InstallSnapshot)


def test_a_follower_behind_the_compaction_point_is_sent_a_snapshot() -> None:
    c = elect()
    c.isolate("c")
    data = write(c, "a", 10)
    c.stabilize()
    c.compact("a", c.commit("a"))
    assert c.raft("a").log.first_index == 13
    c.heal()
    data += write(c, "a", 1, b"after")
    c.run(3)
    (snap,) = snapshots_to(c, "c")
    assert snap.meta.index == 12 and len(snap.payload) == 12
    assert c.members["c"].disk.snapshot == snap.meta  # persisted, and restored from
    assert c.applied("c") == c.applied("a") == data
    assert c.log_terms("c") == [2]  # only the entry after the snapshot is in c's log


def test_a_follower_that_already_has_the_snapshot_entries_keeps_its_suffix() -> None:
    c = elect()
    data = write(c, "a", 5)  # indexes 3..7
    c.deliver(dst="b")  # b appends all five; its answers stay in flight for now
    c.deliver(dst="c")
    c.deliver(src="c")
    assert c.commit("a") == 7
    c.drop(src="a", dst="b")  # so b does not learn that they are committed
    assert c.commit("b") == 2
    c.compact("a", 5)
    meta, payload = c.raft("a").log.snapshot, c.members["a"].disk.snapshot_data
    c.step("b", InstallSnapshot(2, "a", "b", meta, payload))  # e.g. a delayed duplicate
    resp = c.msgs(src="b", kinds=AppendResponse)[-1]
    assert resp.success and resp.index == 5
    assert c.last_index("b") == 7 and c.log_terms("b") == [1, 2, 2, 2, 2, 2, 2]  # rule 6
    assert c.members["b"].disk.snapshot.index == 0  # nothing was restored from a snapshot
    assert c.commit("b") == 5 and c.applied("b") == data[:3]  # applied from its own log
    c.run(2)
    assert c.applied("b") == data


def test_a_conflicting_log_is_discarded_and_replication_then_works() -> None:
    c = elect()
    c.isolate("a")
    write(c, "a", 5, b"lost")  # uncommitted, term 2: will conflict
    c.run(3 * E)
    leader = c.leader()
    assert leader in ("b", "c")
    data = write(c, leader, 10)
    c.stabilize()
    c.compact(leader, c.commit(leader))
    c.heal()
    data += write(c, leader, 1, b"after")
    c.run(3)
    assert c.role("a") is Role.FOLLOWER
    (snap,) = snapshots_to(c, "a")
    assert c.members["a"].disk.snapshot == snap.meta  # rule 7: the log was reset to it
    assert c.applied("a") == c.applied(leader) == data
    # No livelock (hashicorp/raft#697): later writes reach a as plain appends.
    data += write(c, leader, 3, b"later")
    c.run(2)
    assert c.applied("a") == data and len(snapshots_to(c, "a")) == 1


def lose_next_snapshot(c: Cluster) -> None:
    """Deliver messages until the leader sends a snapshot, and lose it."""
    while not c.msgs(kinds=InstallSnapshot):
        c.deliver()
    c.drop(kinds=InstallSnapshot)


def test_a_failed_snapshot_goes_back_to_probing_and_is_sent_again() -> None:
    c = elect()
    c.isolate("c")
    data = write(c, "a", 5)
    c.stabilize()
    c.compact("a", c.commit("a"))
    c.heal()
    data += write(c, "a", 1, b"after")
    lose_next_snapshot(c)  # the stream fails
    c.run(5)
    assert len(snapshots_to(c, "c")) == 1  # a waits for the runtime's report meanwhile
    c.raft("a").report_snapshot("c", ok=False)
    c.run(2)
    assert len(snapshots_to(c, "c")) == 2  # back to probing, which needs a snapshot again
    assert c.applied("c") == data


def test_a_snapshot_lost_without_a_report_is_retried_after_two_election_timeouts() -> None:
    c = elect()
    c.isolate("c")
    data = write(c, "a", 5)
    c.stabilize()
    c.compact("a", c.commit("a"))
    c.heal()
    data += write(c, "a", 1, b"after")
    lose_next_snapshot(c)  # lost, and the runtime never reports it
    for _ in range(2 * E):
        c.run(1)
        c.drop(dst="c", kinds=InstallSnapshot)
    assert len(snapshots_to(c, "c")) == 1
    c.run(3)
    assert len(snapshots_to(c, "c")) == 2 and c.applied("c") == data
