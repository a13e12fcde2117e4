"""Leader election: randomized timeouts, pre-vote, check-quorum, the disruption guard,
durable votes, and the up-to-date log rule."""

from __future__ import annotations

from core_script import Cluster
from tinyraft.core import RequestVote, Role, VoteResponse

E = 10  # Options.election_ticks


def elect(voters: str = "a b c", leader: str = "a", **options: object) -> Cluster:
    c = Cluster.bootstrap(voters, **options)
    c.campaign(leader)
    c.stabilize()
    assert c.leader() == leader
    return c


def test_a_timeout_elects_exactly_one_leader_that_everyone_follows() -> None:
    c = Cluster.bootstrap("a b c d e")
    c.tick_all(E - 1)
    assert all(c.role(n) is Role.FOLLOWER for n in c.alive())  # nobody times out early
    c.run(E + 1)  # every timeout lies in [E, 2E)
    leader = c.leader()
    assert leader is not None
    assert len({t for t, _ in c.elected}) == len(c.elected)  # one leader per term
    assert {c.raft(n).leader for n in c.alive()} == {leader}
    assert {c.term(n) for n in c.alive()} == {c.term(leader)}


def test_timeouts_are_randomized_so_different_seeds_elect_different_members() -> None:
    winners = set()
    for seed in range(12):
        c = Cluster.bootstrap("a b c d e", seed=seed)
        c.run(2 * E)
        winners.add(c.leader())
    assert len(winners) >= 3


def test_pre_vote_does_not_increment_the_term_or_the_vote() -> None:
    c = Cluster.bootstrap("a b c")
    c.campaign("a", pre_vote=True)
    assert c.role("a") is Role.PRE_CANDIDATE
    assert c.members["a"].disk.hard_state.term == 1 and c.raft("a").vote is None
    asks = c.msgs(src="a", kinds=RequestVote)
    assert sorted(m.dst for m in asks) == ["b", "c"]
    assert all(m.pre_vote and m.term == 2 for m in asks)  # the term it would campaign in
    c.deliver(src="a")
    assert [c.term(n) for n in "bc"] == [1, 1]  # granting a pre-vote changes nothing
    c.stabilize()  # the pre-vote won: now the real election, in term 2
    assert c.leader() == "a" and c.term("a") == 2


def test_a_rejoining_member_does_not_bump_the_term_or_depose_the_leader() -> None:
    c = elect()
    c.isolate("c")
    c.run(10 * E)  # c keeps timing out, but only pre-votes
    assert c.term("c") == 2
    c.heal()
    c.run(2 * E)
    assert c.leader() == "a" and [c.term(n) for n in "abc"] == [2, 2, 2]
    assert c.raft("c").leader == "a"


def test_without_pre_vote_the_same_rejoin_deposes_the_leader() -> None:
    # The control experiment: it shows what the test above guards against.
    c = elect(pre_vote=False, check_quorum=False)
    c.isolate("c")
    c.run(10 * E)
    assert c.term("c") > 2
    c.heal()
    c.run(1)
    assert c.term("a") > 2 and c.role("a") is not Role.LEADER


def test_check_quorum_steps_down_a_leader_cut_off_from_the_majority() -> None:
    c = elect()
    c.isolate("a")
    c.tick("a", 2 * E)  # the first check may still count what it heard before the cut
    assert c.role("a") is Role.FOLLOWER and c.raft("a").leader is None


def test_without_check_quorum_a_cut_off_leader_stays_leader() -> None:
    c = elect(check_quorum=False)
    c.isolate("a")
    c.tick("a", 10 * E)
    assert c.role("a") is Role.LEADER


def test_a_follower_that_hears_the_leader_ignores_a_higher_term_vote() -> None:
    c = elect()
    c.run(3)
    c.campaign("c")  # a real (not pre-) vote request in term 3, no timeout behind it
    c.deliver(src="c", kinds=RequestVote)
    assert c.msgs(dst="c", kinds=VoteResponse) == []  # dropped, not even rejected
    assert [c.term(n) for n in "ab"] == [2, 2]
    assert c.leader() == "a"


def test_once_the_leader_is_silent_for_an_election_timeout_the_vote_is_granted() -> None:
    c = elect()
    c.crash("a")
    c.tick("b", E)  # b has not heard from a for an election timeout
    c.drop(src="b")  # (b may have started a campaign of its own: ignore it)
    c.campaign("c")
    c.deliver(src="c", dst="b")
    (vote,) = c.msgs(src="b", dst="c", kinds=VoteResponse)
    assert vote.granted and c.term("b") == c.term("c")


def test_a_vote_is_persisted_before_it_is_answered() -> None:
    c = Cluster.bootstrap("a b c")
    c.raft("a").campaign()
    rd = c.ready("a")
    # The candidate's own term and vote are durable before it asks anyone.
    assert rd.must_sync and rd.hard_state is not None and rd.hard_state.vote == "a"
    assert rd.messages_now == [] and len(rd.messages) == 2
    c.process("a")
    (ask,) = c.drop(src="a", dst="b")
    c.raft("b").step(ask)
    rd = c.ready("b")
    (answer,) = rd.messages
    assert isinstance(answer, VoteResponse) and answer.granted
    assert rd.messages_now == []  # so it is sent only after the write below
    assert rd.must_sync and rd.hard_state is not None
    assert (rd.hard_state.term, rd.hard_state.vote) == (2, "a")
    c.crash("b")  # before the write finished: the vote was never cast, nor sent
    assert c.history(src="b", kinds=VoteResponse) == []
    c.restart("b")
    assert (c.term("b"), c.raft("b").vote) == (1, None)


def test_a_member_that_voted_and_restarted_does_not_vote_twice_in_a_term() -> None:
    c = Cluster.bootstrap("a b c", pre_vote=False, check_quorum=False)
    c.campaign("a")
    c.deliver(src="a", dst="b")  # b votes for a in term 2, and persists it
    c.crash("b")
    c.restart("b")
    c.campaign("c")  # c never heard of term 2: it campaigns in term 2 too
    c.deliver(src="c", dst="b")
    (vote,) = c.msgs(src="b", dst="c", kinds=VoteResponse)
    assert not vote.granted and c.raft("b").vote == "a"


def test_a_candidate_with_a_stale_log_loses() -> None:
    c = elect(check_quorum=False)  # no leases: only the log decides here
    c.isolate("c")
    c.propose("a", b"x")
    c.stabilize()
    assert c.commit("a") == 3
    c.crash("a")
    c.heal()
    c.campaign("c")
    c.stabilize()
    assert c.role("c") is Role.CANDIDATE  # b refused; a is down
    assert [m.granted for m in c.history(src="b", dst="c", kinds=VoteResponse)] == [False]
    c.campaign("b")
    c.stabilize()
    assert c.leader() == "b"
    c.heartbeat()
    assert c.applied("c") == [b"x"]  # the committed entry survived the election


def test_a_single_voter_never_sends_a_term_it_has_not_persisted() -> None:
    c = Cluster.bootstrap("a", learners="l")
    c.raft("a").campaign()  # the only voter: leader of term 2 at once
    c.propose("a", b"x")
    rd = c.ready("a")
    c.deliver(dst="l")  # l appends x at (3, term 2)
    c.crash("a")  # before a's write of term 2, the no-op and x finished
    c.restart("a")
    c.campaign("a")  # term 2 again
    c.propose("a", b"y")  # also at (3, term 2)
    c.stabilize()
    c.run(2)
    assert c.applied("l") == c.applied("a")
    assert all(m.term <= c.members["a"].disk.hard_state.term for m in rd.messages_now)


def test_unanswered_pre_votes_are_asked_again_within_two_ticks() -> None:
    """The leader dies. The first follower to time out asks b, which heard from the
    leader a tick later and still ignores pre-votes: the asker must not wait a whole
    new timeout (up to 2E ticks) but ask again as soon as b's lease is over."""
    c = elect()
    c.crash("a")
    c.raft("b").randomized_timeout = 2 * E - 1
    c.raft("c").randomized_timeout = E
    c.tick("c")  # b heard from the leader one tick later than c
    for _ in range(E - 1):
        c.tick_all()
        c.stabilize()
    assert c.role("c") is Role.PRE_CANDIDATE  # c timed out and asked b...
    assert c.role("b") is Role.FOLLOWER and c.history(src="c", dst="b", kinds=RequestVote)
    for _ in range(2):  # ...which ignored it: one tick later b's lease is over
        c.tick_all()
        c.stabilize()
    assert c.leader() == "c"  # asked again and elected, long before b's own timeout


def test_two_members_that_time_out_together_do_not_split_the_vote() -> None:
    """The leader dies and both survivors time out in the same tick. Granting each
    other's pre-vote would make both candidates in one term, each voting for itself: a
    split vote, and another whole election timeout before anyone leads. With equal logs
    the lower id stands, and the other grants it."""
    c = elect()
    c.crash("a")
    for name in "bc":
        c.raft(name).randomized_timeout = E
    c.tick_all(E)
    assert c.role("b") is Role.PRE_CANDIDATE and c.role("c") is Role.PRE_CANDIDATE
    c.stabilize()
    assert c.leader() == "b"
    votes = [m for m in c.history(kinds=RequestVote) if not m.pre_vote and m.term > 2]
    assert {m.src for m in votes} == {"b"}  # c never stood
    assert c.term("c") == c.term("b") == 3


def test_a_member_with_a_longer_log_wins_a_tie_whatever_its_id() -> None:
    c = elect()
    c.propose("a", b"x")
    c.process("a")
    c.drop(src="a", dst="b")
    c.deliver(src="a", dst="c")  # only c has the entry when a dies
    c.crash("a")
    for name in "bc":
        c.raft(name).randomized_timeout = E
    c.tick_all(E)
    c.stabilize()
    assert c.leader() == "c"
