"""Client sessions (thesis §6.3): exactly-once commands, forgetting acknowledged results,
deterministic expiry, snapshots of the table, and the command batch encoding."""

from __future__ import annotations

import itertools
import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyraft.core.sessions import (
    Command,
    Run,
    SessionTable,
    Verdict,
    decode_batch,
    decode_runs,
    encode_batch,
    encode_run,
    join_records,
)


class Counter:
    """A tiny state machine behind a session table, applied the way a member applies."""

    def __init__(self, **table: int) -> None:
        self.sessions = SessionTable(**table)
        self.value = 0
        self.index = 0

    def apply(self, cmd: Command) -> tuple[Verdict, bytes]:
        self.index += 1
        verdict, cached = self.sessions.check(cmd, self.index)
        if verdict is not Verdict.NEW:
            return verdict, cached
        self.value += int(cmd.payload)
        result = b"%d" % self.value
        self.sessions.record(cmd, self.index, result)
        return verdict, result


def test_a_retried_command_is_answered_from_the_cache_not_reapplied() -> None:
    sm = Counter()
    assert sm.apply(Command(1, 1, 1, b"5")) == (Verdict.NEW, b"5")
    assert sm.apply(Command(2, 1, 1, b"7")) == (Verdict.NEW, b"12")
    assert sm.apply(Command(1, 1, 1, b"5")) == (Verdict.DUPLICATE, b"5")
    assert sm.value == 12
    assert sm.apply(Command(1, 2, 1, b"1")) == (Verdict.NEW, b"13")


def test_results_below_ack_below_are_forgotten_and_then_stale() -> None:
    sm = Counter()
    sm.apply(Command(1, 1, 1, b"1"))
    sm.apply(Command(1, 2, 1, b"1"))
    sm.apply(Command(1, 3, 3, b"1"))  # the client saw the answers to 1 and 2
    assert sm.apply(Command(1, 2, 3, b"1")) == (Verdict.STALE, b"")
    assert sm.apply(Command(1, 3, 3, b"1")) == (Verdict.DUPLICATE, b"3")  # still cached
    assert sm.value == 3


def test_expiry_by_log_index_and_by_capacity() -> None:
    sm = Counter(ttl_entries=3)
    sm.apply(Command(1, 1, 1, b"1"))  # index 1
    for seq in range(1, 5):
        sm.apply(Command(2, seq, seq, b"1"))  # indexes 2..5: client 1 idle for 4 entries
    assert sm.apply(Command(1, 2, 2, b"1")) == (Verdict.EXPIRED, b"")
    sm = Counter(max_sessions=2)
    for client in (1, 2, 3):
        sm.apply(Command(client, 1, 1, b"1"))
    assert len(sm.sessions) == 2
    assert sm.apply(Command(1, 2, 2, b"1"))[0] is Verdict.EXPIRED  # least recently active
    assert sm.apply(Command(3, 1, 1, b"1"))[0] is Verdict.DUPLICATE


commands = st.lists(
    st.builds(
        Command,
        client=st.integers(1, 6),
        seq=st.integers(1, 8),
        ack_below=st.integers(1, 8),
        payload=st.sampled_from([b"0", b"1", b"2"]),
    ),
    max_size=60,
)


@given(commands)
def test_two_members_fed_the_same_entries_decide_the_same(cmds: list[Command]) -> None:
    one, two = Counter(max_sessions=3, ttl_entries=10), Counter(max_sessions=3, ttl_entries=10)
    assert [one.apply(c) for c in cmds] == [two.apply(c) for c in cmds]
    assert one.sessions.encode() == two.sessions.encode() and one.value == two.value


@given(commands, st.lists(st.integers(1, 3), min_size=60, max_size=60))
def test_admitting_a_batch_decides_as_checking_and_recording_each_command(
    cmds: list[Command], entry_sizes: list[int]
) -> None:
    """The sidecar admits a batch of entries (several commands per log index), then
    fills in results; a table fed one command at a time must end up the same."""
    batch, one_by_one = SessionTable(3, 10), SessionTable(3, 10)
    indexes = [i for i, n in enumerate(entry_sizes, 1) for _ in range(n)][: len(cmds)]
    for cmd, index in zip(cmds, indexes, strict=True):
        verdict, cached = one_by_one.check(cmd, index)
        if verdict is Verdict.NEW:
            one_by_one.record(cmd, index, b"r%d" % index)
        assert batch.admit(cmd, index) == (verdict, cached)
        if verdict is Verdict.NEW:
            batch.fill_run(Run(cmd.client, cmd.seq, cmd.ack_below, [cmd.payload]), [b"r%d" % index])
    assert batch.encode() == one_by_one.encode()


@given(commands, commands)
def test_sessions_survive_a_snapshot(before: list[Command], after: list[Command]) -> None:
    live = Counter(max_sessions=3, ttl_entries=10)
    for cmd in before:
        live.apply(cmd)
    restored = Counter(max_sessions=3, ttl_entries=10)
    restored.sessions.restore(live.sessions.encode())
    restored.value, restored.index = live.value, live.index
    assert restored.sessions.encode() == live.sessions.encode()
    assert [restored.apply(c) for c in after] == [live.apply(c) for c in after]


@given(
    st.lists(
        st.builds(
            Command,
            client=st.integers(0, 2**64 - 1),
            seq=st.integers(0, 2**64 - 1),
            ack_below=st.integers(0, 2**64 - 1),
            payload=st.binary(max_size=50),
        ),
        max_size=20,
    )
)
def test_command_batches_round_trip(cmds: list[Command]) -> None:
    data = encode_batch(cmds)
    assert decode_batch(data) == cmds
    runs = decode_runs(data)
    assert [c for r in runs for c in r.commands()] == cmds
    for a, b in itertools.pairwise(runs):  # each run is as long as it can be
        assert (b.client, b.first_seq, b.ack_below) != (
            a.client, a.first_seq + len(a.payloads), a.ack_below
        )  # fmt: skip
    for decode in (decode_batch, decode_runs):
        with pytest.raises(ValueError):
            decode(data + b"\0")


def test_a_retry_after_eviction_is_never_applied_twice() -> None:
    sm = Counter(max_sessions=1)
    sm.apply(Command(1, 1, 1, b"5"))  # applied; the answer is lost on the way back
    sm.apply(Command(2, 1, 1, b"0"))  # another client: client 1's session is evicted
    verdict, _ = sm.apply(Command(1, 1, 1, b"5"))  # client 1 retries
    assert verdict is not Verdict.NEW and sm.value == 5


def test_a_truncated_batch_is_reported_as_malformed() -> None:
    data = encode_batch([Command(1, 2, 3, b"abc"), Command(4, 5, 6, b"de")])
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            decode_batch(data[:cut])


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (join_records([encode_run(1, 1, 1, [])], 1), "a run of no commands"),
        (join_records([encode_run(1, 1, 1, [b"a", b"b"])], 1), "more commands than its count"),
        (join_records([encode_run(1, 1, 1, [b"a"])], 2), "unpack"),  # fewer than its count
        (join_records([encode_run(1, 2**64 - 1, 1, [b"a", b"b"])], 2), "past 2^64-1"),
    ],
)
def test_a_batch_that_contradicts_itself_is_malformed(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        decode_runs(data)


def test_one_request_is_one_run_with_four_bytes_a_command() -> None:
    payloads = [b"x" * 128] * 100
    data = join_records([encode_run(7, 41, 40, payloads)], 100)
    assert decode_runs(data) == [Run(7, 41, 40, payloads)]
    assert len(data) == 8 + 28 + 100 * (4 + 128)


def test_batches_in_the_first_format_still_decode() -> None:
    """Logs written before runs hold a count, then a record per command: a member reads
    them after an upgrade."""
    cmds = [Command(1, 5, 2, b"a"), Command(1, 6, 2, b"bc"), Command(9, 1, 1, b"")]
    first = struct.pack("<I", len(cmds)) + b"".join(
        struct.pack("<QQQI", c.client, c.seq, c.ack_below, len(c.payload)) + c.payload for c in cmds
    )
    assert decode_batch(first) == cmds
    assert decode_runs(first) == [Run(1, 5, 2, [b"a", b"bc"]), Run(9, 1, 1, [b""])]
    for bad in (first + b"\0", first[:-1]):
        with pytest.raises(ValueError):
            decode_runs(bad)
