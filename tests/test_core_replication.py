"""Log replication: the consistency check, conflict truncation, fast back-off, the
current-term commit rule (Figure 8) and the no-op each new leader appends."""

from __future__ import annotations

import itertools

from core_script import Cluster
from tinyraft.core import AppendEntries, AppendResponse, Entry, EntryKind, RequestVote, Role

E = 10


def elect(voters: str = "a b c", leader: str = "a", **options: object) -> Cluster:
    c = Cluster.bootstrap(voters, **options)
    c.campaign(leader)
    c.stabilize()
    return c


def run_until_leader(c: Cluster, among: str, max_ticks: int = 200) -> str:
    for _ in range(max_ticks):
        leader = c.leader()
        if leader in among.split():
            return leader
        c.run(1)
    raise AssertionError(f"no leader among {among}")


def assert_state_machines_agree(c: Cluster) -> None:
    """State machine safety: every member applied a prefix of the same sequence."""
    logs = sorted((c.members[n].applied for n in c.members), key=len)
    for shorter, longer in itertools.pairwise(logs):
        assert longer[: len(shorter)] == shorter


def test_an_append_whose_prev_entry_does_not_match_is_rejected() -> None:
    c = elect()
    assert c.log_terms("b") == [1, 2]
    new = [Entry(3, 2, EntryKind.NORMAL, b"x")]
    for prev_index, prev_term in [(5, 2), (2, 1)]:  # beyond b's log; wrong term at 2
        c.step("b", AppendEntries(2, "a", "b", prev_index, prev_term, new, 2))
        (resp,) = c.drop(src="b", kinds=AppendResponse)
        assert not resp.success and resp.index == prev_index
        assert c.log_terms("b") == [1, 2]
    c.step("b", AppendEntries(2, "a", "b", 2, 2, new, 2))
    (resp,) = c.drop(src="b", kinds=AppendResponse)
    assert resp.success and resp.index == 3 and c.log_terms("b") == [1, 2, 2]


def test_a_follower_drops_an_uncommitted_suffix_that_conflicts_with_the_leader() -> None:
    c = elect()
    c.isolate("a")
    for data in (b"lost-1", b"lost-2"):
        c.propose("a", data)
    c.process("a")
    assert c.log_terms("a") == [1, 2, 2, 2]
    leader = run_until_leader(c, "b c")
    c.propose(leader, b"kept")
    c.stabilize()
    c.heal()
    c.run(3)
    assert c.role("a") is Role.FOLLOWER
    assert c.log_terms("a") == c.log_terms(leader) == [1, 2, c.term(leader), c.term(leader)]
    assert [c.applied(n) for n in "abc"] == [[b"kept"]] * 3


def test_fast_back_off_repairs_a_long_divergent_log_in_a_few_probes() -> None:
    c = elect()
    c.isolate("a")
    for i in range(50):  # 50 entries of term 2 that will never commit
        c.propose("a", b"stale-%d" % i)
        c.process("a")
    first = run_until_leader(c, "b c")
    for i in range(50):
        c.propose(first, b"new-%d" % i)
    c.stabilize()
    # Now a leader elected *after* those entries exist probes a from its log's end.
    c.heal()
    c.isolate(first)
    second = run_until_leader(c, "c" if first == "b" else "b")
    c.run(3)
    assert c.log_terms("a") == c.log_terms(second)
    rejections = [m for m in c.history(src="a", dst=second, kinds=AppendResponse) if not m.success]
    assert 1 <= len(rejections) <= 3  # one per term skipped, not one per entry
    assert c.applied("a") == [b"new-%d" % i for i in range(50)]


def test_an_old_term_entry_on_a_majority_is_not_committed_by_counting() -> None:
    # Raft paper, Figure 8 (indexes shifted by one: index 1 holds the bootstrap config,
    # index 2 the first leader's no-op). One entry per append makes the steps explicit.
    c = Cluster.bootstrap("s1 s2 s3 s4 s5", check_quorum=False, max_msg_bytes=1)
    c.campaign("s1")
    c.stabilize()
    # (a) s1, leader of term 2, replicates x (index 3) to s2 only.
    c.propose("s1", b"xx")
    c.process("s1")
    c.deliver(src="s1", dst="s2")
    c.drop(src="s1")
    c.deliver(src="s2")
    # (b) s1 crashes; s5 wins term 3 with s3 and s4, appends its no-op at 3 and crashes.
    c.crash("s1")
    c.campaign("s5")
    c.drop(dst="s2")
    c.deliver(kinds=RequestVote)
    c.deliver(dst="s5")
    assert c.role("s5") is Role.LEADER and c.log_terms("s5") == [1, 2, 3]
    c.crash("s5")
    c.drop()
    # (c) s1 restarts and wins term 4 (its first try, term 3, is refused by s3 and s4).
    c.restart("s1")
    c.campaign("s1")
    c.stabilize()
    c.campaign("s1")
    c.deliver(kinds=RequestVote)
    c.deliver(dst="s1")
    assert c.role("s1") is Role.LEADER and c.term("s1") == 4
    c.drop(dst="s4")
    c.deliver(dst="s2")  # s2 has x: it takes the term-4 no-op (index 4)
    c.deliver(dst="s3")  # s3 refuses: it lacks index 3 ...
    c.deliver(src="s3")
    c.deliver(dst="s3")  # ... so s1 sends it x alone
    c.deliver(dst="s1")
    assert c.log_terms("s3") == [1, 2, 2]  # x (term 2) is on s1, s2 and s3: a majority
    assert c.commit("s1") == 2  # but it is of an old term: counting commits nothing
    assert c.applied("s1") == []
    # (d) s1 crashes; s5 comes back and wins term 5 with s3 and s4, overwriting x.
    c.crash("s1")
    c.drop()
    c.restart("s5")
    for _ in range(2):  # term 4 is refused (s3 and s4 voted for s1 in it)
        c.campaign("s5")
        c.stabilize()
    assert c.leader() == "s5" and c.term("s5") == 5
    c.restart("s1")
    c.run(1)  # a heartbeat makes the leader probe s1 again
    assert {tuple(c.log_terms(n)) for n in c.members} == {(1, 2, 3, 5)}
    assert all(c.applied(n) == [] for n in c.members)  # x was never applied anywhere
    assert_state_machines_agree(c)


def test_each_new_leader_appends_a_no_op_that_commits_earlier_terms() -> None:
    c = elect(check_quorum=False)
    c.propose("a", b"x")
    c.process("a")
    c.deliver(src="a", dst="b")
    c.drop()  # nobody learns that x is on a majority: it is not committed
    assert c.commit("b") == 2
    c.crash("a")
    c.campaign("b")
    c.stabilize()
    assert c.leader() == "b"
    noop = c.raft("b").log.entry(4)
    assert (noop.kind, noop.term, noop.data) == (EntryKind.NOOP, 3, b"")
    c.heartbeat()  # c learns the new commit index with the next heartbeat
    # No new command was proposed, yet x is committed and applied: by the no-op.
    assert c.commit("b") == c.commit("c") == 4
    assert c.applied("b") == c.applied("c") == [b"x"]


def test_followers_learn_a_commit_with_the_next_append_or_heartbeat() -> None:
    """A commit alone sends nothing (as in hashicorp/raft): followers do not apply in
    step with the leader, whose own apply answers the client. They learn the commit
    index with the next append, or at the latest with the next heartbeat."""
    c = elect()
    c.propose("a", b"x")
    c.stabilize()
    assert c.applied("a") == [b"x"] and c.applied("b") == c.applied("c") == []
    c.propose("a", b"y")
    c.process("a")
    c.deliver(src="a", dst="b")  # the append of y carries the commit of x
    assert c.applied("b") == [b"x"] and c.applied("c") == []
    c.stabilize()
    c.heartbeat()
    assert c.applied("a") == c.applied("b") == c.applied("c") == [b"x", b"y"]


def test_a_new_commit_index_alone_is_not_written_and_a_restart_learns_it_again() -> None:
    c = elect()
    c.propose("a", b"x")
    c.stabilize()
    c.heartbeat()
    assert c.commit("b") == 3 and c.members["b"].disk.hard_state.commit < 3  # no write
    c.crash("b")
    c.restart("b")
    c.heartbeat()
    assert c.commit("b") == 3 and c.applied("b") == [b"x"]
