"""Random interleavings of ticks, deliveries, drops, crashes and restarts on a three-member
cluster never elect two leaders in one term, nor let two members apply different entries."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from core_script import Cluster

ACTIONS = ["tick"] * 8 + ["deliver"] * 8 + ["drop", "crash", "restart"] + ["propose"] * 3

steps = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.sampled_from("abc"), st.integers(0, 1000)),
    max_size=300,
)


def play(c: Cluster, action: str, member: str, n: int) -> None:
    alive = c.members[member].alive
    if action == "tick" and alive:
        c.tick(member)
    elif action in ("deliver", "drop") and c.inflight:
        msg = c.inflight.pop(n % len(c.inflight))  # any message, in any order
        if action == "deliver":
            c.inflight.insert(0, msg)
            c.deliver(src=msg.src, dst=msg.dst, kinds=type(msg))
    elif action == "crash" and alive and n % 4 == 0:
        c.crash(member)
    elif action == "restart" and not alive:
        c.restart(member)
    elif action == "propose" and (leader := c.leader()) is not None:
        c.propose(leader, b"%d" % n)
        c.process(leader)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_at_most_one_leader_per_term_and_one_applied_history(script: list) -> None:
    c = Cluster.bootstrap("a b c", election_ticks=3)
    for action, member, n in script:
        play(c, action, member, n)
        leaders: dict[int, str] = {}
        for term, name in c.elected:
            assert leaders.setdefault(term, name) == name, f"two leaders in term {term}"
    histories = sorted((m.applied for m in c.members.values()), key=len)
    for shorter, longer in itertools.pairwise(histories):
        assert longer[: len(shorter)] == shorter
