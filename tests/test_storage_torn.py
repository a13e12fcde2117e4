"""Torn writes and damage in the log database and its WAL, on real SQLite files.

A torn tail (a crash cuts the last transaction) recovers to the last complete batch;
damage anywhere else refuses to start with a message naming the file and the way
out, and never serves wrong data."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from storage_helpers.files import copy_member, cut, flip, transactions, wal_frames
from tinyraft.core.types import Entry, EntryKind, HardState
from tinyraft.storage import CorruptionError, DataDir, Recovered

CLUSTER, MEMBER = "torn-cluster", "m1"
BATCHES = 8


def batch(n: int) -> list[Entry]:
    first = n * 20 + 1
    return [
        Entry(i, 1, EntryKind.NORMAL, b"<entry %06d>" % i * 8) for i in range(first, first + 20)
    ]


def hard_state(n: int) -> HardState:
    return HardState(1, MEMBER, n * 20)


def expected(batches: int) -> tuple[HardState, list[Entry]]:
    """What a member that completed `batches` saves recovers."""
    entries = [e for n in range(batches) for e in batch(n)]
    return (hard_state(batches - 1) if batches else HardState()), entries


def open_member(path: Path) -> Recovered:
    dd, recovered = DataDir.open(path, CLUSTER, MEMBER)
    dd.close()
    return recovered


def crashed_member(tmp_path: Path, *, checkpointed: int = 0) -> Path:
    """A data dir as SIGKILL leaves it after BATCHES saves, one transaction each; the
    first `checkpointed` of them were checkpointed into the db file by a clean close."""
    live = tmp_path / "live"
    dd, _ = DataDir.open(live, CLUSTER, MEMBER)
    for n in range(BATCHES + 1):
        if n == checkpointed and n:  # a clean close checkpoints the WAL into raft.db
            dd.close()
            dd, _ = DataDir.open(live, CLUSTER, MEMBER)
        if n < BATCHES:
            dd.log.save(hard_state(n), batch(n))
    crashed = copy_member(live, tmp_path / "crashed")
    dd.close()
    return crashed


def assert_recovers(path: Path, batches: int) -> None:
    recovered = open_member(path)
    assert (recovered.hard_state, recovered.entries) == expected(batches)


def assert_refuses(path: Path, file: Path, *words: str) -> CorruptionError:
    with pytest.raises(CorruptionError) as info:
        open_member(path)
    message = str(info.value)
    assert str(file) in message, message
    assert "Refusing to start" in message and "remove its data dir and rejoin" in message
    for word in words:
        assert word in message, message
    return info.value


def batch_transactions(wal: Path) -> list[list[int]]:
    """Frame offsets of each save's transaction (the last BATCHES transactions)."""
    txns = transactions(wal.read_bytes())
    return [[f.offset for f in txn] for txn in txns[-BATCHES:]]


# --- the WAL -----------------------------------------------------------------------


def test_wal_cut_anywhere_in_the_last_transaction_recovers_the_previous_batch(
    tmp_path: Path,
) -> None:
    pristine = crashed_member(tmp_path)
    wal = pristine / "raft.db-wal"
    frames = wal_frames(wal.read_bytes())
    last = batch_transactions(wal)[-1]
    end = last[-1] + frames[0].size
    for i, size in enumerate(
        [last[0] + 10, last[0] + frames[0].size, (last[0] + end) // 2, end - 1]
    ):
        member = copy_member(pristine, tmp_path / f"cut{i}")
        cut(member / "raft.db-wal", size)
        assert_recovers(member, BATCHES - 1)
    assert_recovers(copy_member(pristine, tmp_path / "whole"), BATCHES)


def test_wal_flip_in_the_last_transaction_recovers_the_previous_batch(tmp_path: Path) -> None:
    pristine = crashed_member(tmp_path)
    last = batch_transactions(pristine / "raft.db-wal")[-1]
    for i, frame in enumerate(last):
        for where in (0, 7, 16, 30, 1000):  # page number, commit size, checksum, page data
            member = copy_member(pristine, tmp_path / f"flip{i}-{where}")
            flip(member / "raft.db-wal", frame + where)
            assert_recovers(member, BATCHES - 1)


def test_wal_flip_before_the_last_transaction_refuses_to_start(tmp_path: Path) -> None:
    pristine = crashed_member(tmp_path)
    txns = batch_transactions(pristine / "raft.db-wal")
    for n in range(BATCHES - 2):  # the second-to-last commit frame's size field: see wal_check
        for frame in txns[n]:
            for where in (0, 9, 13, 20, 24, 2000, 4119):  # pgno, salts, checksum, page
                member = copy_member(pristine, tmp_path / f"flip{frame}-{where}")
                flip(member / "raft.db-wal", frame + where)
                assert_refuses(member, member / "raft.db-wal", "write-ahead log is damaged")


def test_wal_header_damage_refuses_to_start(tmp_path: Path) -> None:
    pristine = crashed_member(tmp_path)
    for where in (0, 5, 10, 17, 27):
        member = copy_member(pristine, tmp_path / f"flip{where}")
        flip(member / "raft.db-wal", where)
        assert_refuses(member, member / "raft.db-wal", "write-ahead log header")


def test_leftovers_of_torn_transactions_are_a_crash_not_damage(tmp_path: Path) -> None:
    """A torn transaction T1 is dropped by recovery; the next ones overwrite part of its
    frames and the one after is torn again. The WAL then holds frames of this
    generation that fail their checksums, with no commit frame: a crash, not damage."""
    live = tmp_path / "live"
    dd, _ = DataDir.open(live, CLUSTER, MEMBER)
    dd.log.save(hard_state(0), batch(0))
    base = copy_member(live, tmp_path / "base")
    big = [Entry(i, 1, EntryKind.NORMAL, bytes([i % 256]) * 300) for i in range(21, 421)]
    dd.log.save(hard_state(1), big)
    with_t1 = copy_member(live, tmp_path / "with_t1")
    dd.close()

    t1 = (with_t1 / "raft.db-wal").read_bytes()
    t1_commit = [f for f in wal_frames(t1) if f.commit][-1]
    (base / "raft.db-wal").write_bytes(t1[: t1_commit.offset])  # killed before T1's commit
    dd, recovered = DataDir.open(base, CLUSTER, MEMBER)
    assert recovered.entries == batch(0)
    dd.log.save(hard_state(1), batch(1))
    before_t3 = (base / "raft.db-wal").read_bytes()
    dd.log.save(hard_state(2), batch(2))
    after_t3 = bytearray((base / "raft.db-wal").read_bytes())
    crashed = copy_member(base, tmp_path / "crashed")
    dd.close()

    # T3 killed before its commit frame was written: those bytes are whatever was there.
    commit = [f for f in wal_frames(bytes(after_t3)) if f.commit][-1]
    assert len(before_t3) >= commit.offset + commit.size, "T1's leftovers must lie beyond T3"
    after_t3[commit.offset : commit.offset + commit.size] = before_t3[
        commit.offset : commit.offset + commit.size
    ]
    (crashed / "raft.db-wal").write_bytes(bytes(after_t3))
    assert_recovers(crashed, 2)


def test_wal_damage_anywhere_loses_at_most_the_last_batch(tmp_path: Path) -> None:
    """Flip a random byte anywhere in the WAL: in the last transaction the member
    recovers without it (a torn tail looks the same); anywhere else it must refuse."""
    pristine = crashed_member(tmp_path)
    wal = pristine / "raft.db-wal"
    last_start = batch_transactions(wal)[-1][0]
    rng = random.Random(3)
    for i in range(150):
        member = copy_member(pristine, tmp_path / f"m{i}")
        offset = rng.randrange(wal.stat().st_size)
        flip(member / "raft.db-wal", offset, 1 << rng.randrange(8))
        if offset >= last_start:
            assert_recovers(member, BATCHES - 1)
        else:
            assert_refuses(member, member / "raft.db-wal")


# --- the database file ---------------------------------------------------------------


def test_db_flip_inside_entry_data_is_caught_by_the_record_checksum(tmp_path: Path) -> None:
    pristine = crashed_member(tmp_path, checkpointed=BATCHES - 1)  # all but one in raft.db
    db = pristine / "raft.db"
    offset = db.read_bytes().index(b"<entry %06d>" % 30)
    assert offset > 0
    flip(db, offset + 3, 0x01)
    error = assert_refuses(pristine, db, "entries 21..40 fails its checksum")
    assert error.path == str(db)


def test_db_damage_anywhere_refuses_or_changes_nothing(tmp_path: Path) -> None:
    """Damage random places of a checkpointed database: SQLite's own errors
    ('database disk image is malformed', 'file is not a database'), quick_check and
    the record checksums must catch every change that matters; the rest must recover
    exactly the acknowledged state. Nothing else may happen."""
    pristine = crashed_member(tmp_path, checkpointed=BATCHES)
    db_size = (pristine / "raft.db").stat().st_size
    rng = random.Random(5)
    outcomes = {"refused": 0, "unchanged": 0}
    for i in range(300):
        member = copy_member(pristine, tmp_path / f"m{i}")
        offset = rng.randrange(db_size)
        if i % 3:
            flip(member / "raft.db", offset, 1 << rng.randrange(8))
        else:  # a run of garbage, as a torn or misdirected write leaves
            data = bytearray((member / "raft.db").read_bytes())
            data[offset : offset + 64] = rng.randbytes(64)
            (member / "raft.db").write_bytes(bytes(data[:db_size]))
        try:
            assert_recovers(member, BATCHES)
            outcomes["unchanged"] += 1
        except CorruptionError as error:
            assert error.path == str(member / "raft.db"), error
            assert "Refusing to start" in str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50, outcomes


def test_db_cut_short_refuses_to_start(tmp_path: Path) -> None:
    pristine = crashed_member(tmp_path, checkpointed=BATCHES)
    db = pristine / "raft.db"
    for fraction in (0.0, 0.3, 0.6, 0.9):
        member = copy_member(pristine, tmp_path / f"cut{fraction}")
        cut(member / "raft.db", int(db.stat().st_size * fraction))
        assert_refuses(member, member / "raft.db")


def test_db_pages_torn_by_an_interrupted_checkpoint_recover(tmp_path: Path) -> None:
    """A checkpoint copies WAL frames into the db file and only then resets the WAL.
    Killed half way, the db file holds torn pages that the WAL still has whole."""
    pristine = crashed_member(tmp_path, checkpointed=BATCHES // 2)
    db = pristine / "raft.db"
    wal = (pristine / "raft.db-wal").read_bytes()
    page_size = wal_frames(wal)[0].size - 24
    data = bytearray(db.read_bytes())
    pages = {f.page for f in wal_frames(wal)}
    for page in pages:
        start = (page - 1) * page_size
        if len(data) < start + page_size:
            data.extend(bytes(start + page_size - len(data)))
        data[start + page_size // 2 : start + page_size] = b"\xa5" * (page_size // 2)
    db.write_bytes(bytes(data))
    assert_recovers(pristine, BATCHES)
