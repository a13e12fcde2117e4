"""The applier runs whole batches of committed entries through the session table and
the Module at once; every member batches differently. Whatever the batching, each
command must get the answer, and the table the state, of applying the commands one at
a time (the Module here records what it is asked, so answers name their command)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tinyraft.core.sessions import Command, SessionTable, Verdict, decode_batch, encode_batch
from tinyraft.core.types import Entry, EntryKind
from tinyraft.server.applier import Applier


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
