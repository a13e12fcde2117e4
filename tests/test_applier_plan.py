"""The applier runs whole batches of committed entries through the session table and
the Module at once; every member batches differently. Whatever the batching, each
command must get the answer, and the table the state, of applying the commands one at
a time (the Module here records what it is asked, so answers name their command)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tinyraft.core.sessions import Command, SessionTable, Verdict, decode_batch, encode_batch
from tinyraft.core.types import Entry, EntryKind, SnapshotMeta
from tinyraft.server.applier import Applier
from tinyraft.server.module_client import ModuleUnavailable
from tinyraft.storage import SnapshotInfo


class EchoModule:
    address = "in-process"

    async def apply(
        self, after: int, indexes: list[int], commands: list[bytes], last: int
    ) -> list[bytes]:
        return [b"%d:%s" % (i, c) for i, c in zip(indexes, commands, strict=True)]


class Quiet:
    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any) -> Any:
        return self


class Answers:
    """The part of a Member the applier answers through."""

    def __init__(self) -> None:
        self.metrics = Quiet()
        self.answers: dict[int, list[Any]] = {}

    def is_waiting(self, index: int) -> bool:
        return True

    def entry_applied(self, index: int, term: int, results: list[Any]) -> None:
        self.answers[index] = [r if type(r) is bytes else "refused" for r in results]


def one_at_a_time(entries: list[Entry], table: SessionTable) -> dict[int, list[Any]]:
    answers = {}
    for e in entries:
        out: list[Any] = []
        for cmd in decode_batch(e.data) if e.data else []:
            verdict, cached = table.check(cmd, e.index)
            if verdict is Verdict.NEW:
                table.record(cmd, e.index, b"%d:%s" % (e.index, cmd.payload))
                out.append(b"%d:%s" % (e.index, cmd.payload))
            else:
                out.append(cached if verdict is Verdict.DUPLICATE else "refused")
        answers[e.index] = out
    return answers


commands = st.builds(
    Command,
    client=st.integers(1, 4),
    seq=st.integers(1, 6),
    ack_below=st.integers(0, 4),
    payload=st.sampled_from([b"a", b"b", b"c"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(commands, max_size=4), min_size=1, max_size=20),
    st.lists(st.integers(1, 6), min_size=20, max_size=20),
    st.integers(1, 4),
    st.integers(1, 8),
)
def test_batched_apply_answers_as_one_command_at_a_time(
    batches: list[list[Command]], cuts: list[int], max_sessions: int, ttl: int
) -> None:
    applies_as_one_at_a_time(batches, cuts, max_sessions, ttl)


def run_of(client: int, first_seq: int, ack_below: int, count: int) -> list[Command]:
    return [
        Command(client, first_seq + i, ack_below, b"abc"[i % 3 : i % 3 + 1]) for i in range(count)
    ]


# What Callers send: runs of one client's consecutive commands (which the applier takes
# a run at a time), overlapping earlier ones when a request is retried.
runs = st.builds(
    run_of, st.integers(1, 3), st.integers(1, 12), st.integers(0, 8), st.integers(1, 5)
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(runs, max_size=3).map(lambda rs: [c for r in rs for c in r]),
        min_size=1,
        max_size=20,
    ),
    st.lists(st.integers(1, 6), min_size=20, max_size=20),
    st.integers(1, 4),
    st.integers(1, 8),
)
def test_batched_runs_answer_as_one_command_at_a_time(
    batches: list[list[Command]], cuts: list[int], max_sessions: int, ttl: int
) -> None:
    applies_as_one_at_a_time(batches, cuts, max_sessions, ttl)


def applies_as_one_at_a_time(
    batches: list[list[Command]], cuts: list[int], max_sessions: int, ttl: int
) -> None:
    entries = [
        Entry(index=i, term=1, kind=EntryKind.NORMAL, data=encode_batch(cmds) if cmds else b"")
        for i, cmds in enumerate(batches, 1)
    ]
    expected_table = SessionTable(max_sessions, ttl)
    expected = one_at_a_time(entries, expected_table)

    member = Answers()
    applier = Applier(member, EchoModule())  # type: ignore[arg-type]
    applier.sessions = SessionTable(max_sessions, ttl)

    async def apply_in_batches() -> None:
        start = 0
        for cut in cuts:
            await applier._apply(entries[start : start + cut], answer=True)
            start += cut
        await applier._apply(entries[start:], answer=True)

    asyncio.run(apply_in_batches())
    assert member.answers == expected
    assert applier.sessions.encode() == expected_table.encode()


class DownModule:
    """A Module that cannot be reached: every call fails."""

    address = "nowhere"

    def __init__(self) -> None:
        self.asked: list[int] = []  # the last index of each apply it was sent

    async def apply(
        self, after: int, indexes: list[int], commands: list[bytes], last: int
    ) -> list[bytes]:
        self.asked.append(last)
        raise ModuleUnavailable("the Module at nowhere: UNAVAILABLE")

    async def info(self) -> None:
        raise ModuleUnavailable("the Module at nowhere: UNAVAILABLE")


def test_entries_stuck_on_a_dead_module_give_way_to_a_snapshot_with_those_behind_them() -> None:
    """A follower cut off with committed entries it could not apply gets a snapshot
    past them. It must drop them and every batch queued before the snapshot: applying
    a later batch on a Module that missed an earlier one (once it answers again)
    would let reads see a state that never existed."""
    module = DownModule()
    applier = Applier(Answers(), module)  # type: ignore[arg-type]
    stuck = [Entry(1, 1, EntryKind.NORMAL, encode_batch([Command(1, 1, 0, b"a")]))]
    behind = [Entry(2, 1, EntryKind.NORMAL, encode_batch([Command(1, 2, 0, b"b")]))]
    snapshot = SnapshotInfo(SnapshotMeta(9, 1), 0, "", Path("snap"), Path("manifest"))
    applier.queue.extend([behind, snapshot])

    asyncio.run(applier._apply(stuck, answer=False))

    assert list(applier.queue) == [snapshot]
    assert module.asked == [1] and applier.applied == 0
