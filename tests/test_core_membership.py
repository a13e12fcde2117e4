"""Membership changes, one server at a time: learners, promotion, removal, the rules that
refuse unsafe changes, and quorums computed from the configuration in force."""

from __future__ import annotations

import pytest

from core_script import Cluster
from tinyraft.core import AppendEntries, ConfigChangeRefused, Heartbeat, RequestVote, Role

E = 10


def elect(voters: str = "a b c", **options: object) -> Cluster:
    c = Cluster.bootstrap(voters, **options)
    c.campaign("a")
    c.stabilize()
    return c


def change(c: Cluster, op: str, member: str, leader: str = "a") -> int:
    index = c.raft(leader).propose_config(op, member)
    c.stabilize()
    assert c.commit(leader) >= index
    return index


def with_learner_d() -> Cluster:
    c = elect()
    c.add_member("d")
    change(c, "add_learner", "d")
    return c


def test_a_learner_receives_the_log_but_neither_votes_nor_counts_for_quorum() -> None:
    c = with_learner_d()
    c.propose("a", b"x")
    c.stabilize()
    assert c.applied("d") == [b"x"] and c.log_terms("d") == c.log_terms("a")
    assert c.raft("d").config.learners == {"d"} and "d" not in c.raft("d").config.voters
    c.isolate("b", "c")
    index = c.propose("a", b"y")
    c.run(3)
    assert c.raft("a").progress["d"].match == index  # d has y ...
    assert c.commit("a") < index  # ... but a and d are not a quorum of {a, b, c}
    c.heal()
    c.crash("a")
    c.run(3 * E)
    assert c.role("d") is Role.FOLLOWER and c.leader() in ("b", "c")
    assert c.history(dst="d", kinds=RequestVote) == []  # candidates do not ask learners


def test_a_promoted_learner_votes_and_counts() -> None:
    c = with_learner_d()
    change(c, "promote", "d")
    assert c.raft("a").config.voters == {"a", "b", "c", "d"}
    c.isolate("b")
    index = c.propose("a", b"x")
    c.run(2)
    assert c.commit("a") >= index  # a, c and d: 3 of 4
    c.isolate("c")
    index = c.propose("a", b"y")
    c.run(2)
    assert c.commit("a") < index  # a and d: 2 of 4 is not a quorum


def test_a_removed_member_gets_nothing_more_and_cannot_disrupt() -> None:
    c = elect()
    change(c, "remove", "c")
    assert c.raft("a").config.voters == {"a", "b"}
    sent_to_c = len(c.history(dst="c"))
    c.propose("a", b"x")
    c.run(5 * E)
    assert len(c.history(dst="c")) == sent_to_c
    # c may never learn of its removal (the leader stopped sending at once, thesis
    # §4.2.2), so it times out and asks for pre-votes: they change nothing.
    assert c.history(src="c", kinds=RequestVote)
    assert c.leader() == "a" and c.term("a") == c.term("b") == 2
    assert c.applied("b") == [b"x"]


def test_only_one_change_at_a_time() -> None:
    c = elect()
    c.add_member("d")
    c.add_member("e")
    first = c.raft("a").propose_config("add_learner", "d")
    with pytest.raises(ConfigChangeRefused):
        c.raft("a").propose_config("add_learner", "e")
    assert c.last_index("a") == first  # nothing appended for the refused change
    c.stabilize()
    change(c, "add_learner", "e")  # once the first one committed
    assert c.raft("a").config.learners == {"d", "e"}


def test_a_new_leader_refuses_changes_until_it_committed_in_its_term() -> None:
    c = Cluster.bootstrap("a b c")
    c.add_member("d")
    c.campaign("a")
    c.deliver(kinds=RequestVote)
    c.deliver(src="b")
    c.deliver(src="c")
    assert c.role("a") is Role.LEADER
    assert c.commit("a") < c.last_index("a")  # its no-op is not committed yet
    with pytest.raises(ConfigChangeRefused):
        c.raft("a").propose_config("add_learner", "d")
    c.stabilize()
    change(c, "add_learner", "d")


def test_a_removed_leader_steps_down_once_the_removal_commits() -> None:
    c = elect()
    index = c.raft("a").propose_config("remove", "a")
    c.process("a")
    asked = len(c.history(src="a", kinds=RequestVote))
    assert c.role("a") is Role.LEADER  # still leads, to commit its own removal
    c.deliver(dst="b")
    c.deliver(dst="c")
    c.deliver(dst="a")
    assert c.commit("a") >= index and c.role("a") is Role.FOLLOWER
    c.run(3 * E)
    assert c.leader() in ("b", "c")
    assert len(c.history(src="a", kinds=RequestVote)) == asked  # a knows it is out
    c.propose(c.leader(), b"x")
    c.stabilize()
    c.heartbeat()
    assert c.applied("b") == c.applied("c") == [b"x"]


def test_quorum_follows_the_configuration_in_force() -> None:
    c = elect("a b c d e")
    c.isolate("c", "d", "e")
    index = c.propose("a", b"x")
    c.run(2)
    assert c.commit("a") < index  # 2 of 5
    c.heal()
    c.run(1)
    change(c, "remove", "d")
    change(c, "remove", "e")
    c.isolate("c")
    index = c.propose("a", b"y")
    c.run(2)
    assert c.commit("a") >= index  # 2 of 3
    assert c.applied("b") == [b"x", b"y"]


def test_a_truncated_config_entry_reverts_the_follower_configuration() -> None:
    c = elect("a b c d e")
    c.raft("a").propose_config("remove", "e")
    c.process("a")
    c.deliver(src="a", dst="b", kinds=AppendEntries)
    c.drop()
    assert c.raft("b").config.voters == {"a", "b", "c", "d"}  # in force once appended
    c.isolate("a", "b")
    c.run(3 * E)
    leader = c.leader()
    assert leader in ("c", "d", "e")
    c.propose(leader, b"x")
    c.heal()
    c.run(3)
    assert c.raft("b").config.voters == {"a", "b", "c", "d", "e"}  # truncated: reverted
    assert c.log_terms("b") == c.log_terms(leader) and c.applied("b") == [b"x"]
    assert c.history(src=leader, dst="e", kinds=Heartbeat)  # e is still a member
