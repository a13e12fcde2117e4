"""SqliteLogStore behaviour on real files: appends, conflict truncation, compaction,
range reads, validation, metrics hooks, checkpoints beside the writer, and a random
model-based run."""

from __future__ import annotations

import random
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from tinyraft.core.types import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from tinyraft.local import wait_for
from tinyraft.storage import (
    CompactedError,
    CorruptionError,
    LogStore,
    SqliteLogStore,
    StorageError,
    checkpointer,
)

CONFIG = Configuration(frozenset({"a", "b", "c"}))


def batch(first: int, count: int, term: int = 1) -> list[Entry]:
    return [
        Entry(i, term, EntryKind(i % 3), b"entry %d term %d " % (i, term) * (i % 4))
        for i in range(first, first + count)
    ]


def reopen(store: SqliteLogStore) -> SqliteLogStore:
    store.close()
    return SqliteLogStore.open(store.path.parent)


def test_save_load_and_reopen(tmp_path: Path) -> None:
    store: LogStore = SqliteLogStore.open(tmp_path)
    assert store.load() == (HardState(), None, [])
    store.save(HardState(1, "a", 0), batch(1, 5))
    store.save(None, batch(6, 5))
    store.save(HardState(1, "a", 7), [])
    assert store.load() == (HardState(1, "a", 7), None, batch(1, 10))
    assert isinstance(store, SqliteLogStore)
    store = reopen(store)
    assert store.load() == (HardState(1, "a", 7), None, batch(1, 10))
    store.close()


def test_conflict_truncation_inside_and_at_record_boundaries(tmp_path: Path) -> None:
    store = SqliteLogStore.open(tmp_path)
    store.save(HardState(1, "a", 2), batch(1, 10))
    store.save(None, batch(11, 10))
    store.save(HardState(2, "b", 2), batch(5, 3, term=2))  # inside the first record
    expected = batch(1, 4) + batch(5, 3, term=2)
    assert store.load()[2] == expected
    store.save(HardState(3, "c", 2), batch(8, 2, term=3))  # exactly at a record's start
    expected += batch(8, 2, term=3)
    assert store.load()[2] == expected
    store = reopen(store)
    assert store.load()[2] == expected
    store.close()


def test_entries_reads_any_range_across_records(tmp_path: Path) -> None:
    store = SqliteLogStore.open(tmp_path)
    reference: list[Entry] = []
    rng = random.Random(7)
    while len(reference) < 300:
        chunk = batch(len(reference) + 1, rng.randint(1, 40))
        store.save(None, chunk)
        reference += chunk
    end = len(reference) + 1
    for _ in range(200):
        lo = rng.randint(1, end)
        hi = rng.randint(lo, end)
        assert store.entries(lo, hi) == reference[lo - 1 : hi - 1]
    with pytest.raises(ValueError):
        store.entries(10, end + 1)
    store.close()


def test_compaction_keeps_the_suffix_and_cuts_a_straddling_record(tmp_path: Path) -> None:
    store = SqliteLogStore.open(tmp_path)
    store.save(HardState(1, "a", 15), batch(1, 10))
    store.save(None, batch(11, 10))
    meta = SnapshotMeta(13, 1, CONFIG)
    store.compact(meta)
    assert store.load() == (HardState(1, "a", 15), meta, batch(14, 7))
    with pytest.raises(CompactedError):
        store.entries(13, 15)
    assert store.entries(14, 16) == batch(14, 2)
    store.compact(SnapshotMeta(5, 1, CONFIG))  # older than what is recorded: nothing to do
    store = reopen(store)
    assert store.load() == (HardState(1, "a", 15), meta, batch(14, 7))
    store.save(None, batch(21, 1))
    assert store.load()[2] == batch(14, 8)
    store.close()


def test_compaction_leaves_old_records_for_short_prune_steps(tmp_path: Path) -> None:
    """compact() must not hold the disk thread for a whole compaction: it rewrites
    only the straddling record; prune() then deletes the rest a few records at a time.
    Left-over records (a crash between the two) are never read and are pruned at open."""
    store = SqliteLogStore.open(tmp_path)
    store.save(HardState(1, "a", 50), batch(1, 5))
    for first in range(6, 51, 5):
        store.save(None, batch(first, 5))  # ten records of five entries
    meta = SnapshotMeta(50, 1, CONFIG)  # the whole log: every record is left over
    store.compact(meta)
    assert store.load() == (HardState(1, "a", 50), meta, [])
    store = reopen(store)  # left-over records do not make the log end before the snapshot
    assert store.load() == (HardState(1, "a", 50), meta, [])
    store.save(None, batch(51, 3))
    assert store.load()[2] == batch(51, 3)
    rows = lambda: store._conn.execute("SELECT count(*) FROM log").fetchone()[0]  # noqa: E731
    assert rows() == 11
    assert store.prune(records=4) is True and rows() == 7
    assert store.prune(records=4) is True and rows() == 3
    assert store.prune(records=4) is False and rows() == 1  # the live record stays
    assert store.load() == (HardState(1, "a", 50), meta, batch(51, 3))
    store.close()


def _bytes_written_by_this_process() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))


def test_pruning_frees_pages_without_writing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's SQLite zeroes every freed page by default: pruning the log below a
    snapshot then wrote to the WAL twice the bytes it freed, and the next append's
    fsync waited for them (prune steps of 3-35 ms, on every member after each
    snapshot)."""
    monkeypatch.setattr(checkpointer, "TRIGGER_BYTES", 1 << 40)  # no copying meanwhile
    store = SqliteLogStore.open(tmp_path)
    size = 1 << 20
    for index in range(1, 5):
        store.save(HardState(1, "a", 0), [Entry(index, 1, EntryKind.NORMAL, b"x" * size)])
    store.compact(SnapshotMeta(4, 1, CONFIG))
    before = _bytes_written_by_this_process()
    while store.prune():
        pass
    written = _bytes_written_by_this_process() - before
    assert store._conn.execute("SELECT count(*) FROM log").fetchone()[0] == 0
    assert written < size // 4, f"pruning 4 MiB of entries wrote {written} bytes"
    store.close()


def test_a_snapshot_that_does_not_match_the_log_replaces_all_of_it(tmp_path: Path) -> None:
    store = SqliteLogStore.open(tmp_path)
    store.save(HardState(1, "a", 2), batch(1, 10))
    meta = SnapshotMeta(5, 2, CONFIG)  # the leader's entry 5 has term 2, ours has term 1
    store.compact(meta)
    assert store.load() == (HardState(1, "a", 2), meta, [])
    store.save(None, batch(6, 2, term=2))
    beyond = SnapshotMeta(50, 2, CONFIG)  # a snapshot past the end of the log
    store.compact(beyond)
    store = reopen(store)
    assert store.load() == (HardState(1, "a", 2), beyond, [])
    store.save(None, batch(51, 1, term=2))
    assert store.load()[2] == batch(51, 1, term=2)
    store.close()


def test_invalid_appends_are_refused_and_change_nothing(tmp_path: Path) -> None:
    store = SqliteLogStore.open(tmp_path)
    store.save(HardState(1, "a", 4), batch(1, 10))
    store.compact(SnapshotMeta(2, 1, CONFIG))
    before = store.load()
    bad = [
        batch(12, 3),  # a gap after 10
        batch(11, 1) + batch(13, 1),  # not contiguous
        batch(2, 3),  # covered by the snapshot
        batch(4, 2, term=2),  # would replace committed entry 4
    ]
    for entries in bad:
        with pytest.raises(ValueError):
            store.save(HardState(2, "b", 4), entries)
    assert store.load() == before
    store.close()


def test_metrics_hooks_report_each_synced_save(tmp_path: Path) -> None:
    fsyncs: list[float] = []
    written: list[int] = []
    store = SqliteLogStore.open(tmp_path, on_fsync=fsyncs.append, on_bytes_written=written.append)
    store.save(HardState(1, "a", 0), batch(1, 16))
    store.save(HardState(1, "a", 0), [])  # unchanged: no transaction at all
    store.save(HardState(1, "a", 3), [], sync=False)
    assert len(fsyncs) == 1 and fsyncs[0] > 0
    assert written[0] >= sum(len(e.data) for e in batch(1, 16)) and len(written) == 2
    store.close()


def test_unsynced_saves_become_durable_with_the_next_synced_one(tmp_path: Path) -> None:
    store = SqliteLogStore.open(tmp_path)
    store.save(HardState(1, "a", 0), batch(1, 3), sync=False)
    store.save(HardState(1, "a", 2), [], sync=False)
    store.save(None, batch(4, 3))
    store = reopen(store)
    assert store.load() == (HardState(1, "a", 2), None, batch(1, 6))
    store.close()


def test_large_entries_and_batches(tmp_path: Path) -> None:
    store = SqliteLogStore.open(tmp_path)
    big = [Entry(1, 1, EntryKind.NORMAL, bytes(range(256)) * 8192)]  # 2 MiB
    many = batch(2, 5000)
    store.save(HardState(1, "a", 0), big)
    store.save(None, many)
    store = reopen(store)
    assert store.load()[2] == big + many
    store.close()


def test_the_wal_is_copied_beside_the_writer_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer's thread copies the WAL into the database file, and the writer
    then starts the WAL over instead of growing it."""
    monkeypatch.setattr(checkpointer, "TRIGGER_BYTES", 1)  # a round after every save
    store = SqliteLogStore.open(tmp_path)
    db, wal = tmp_path / "raft.db", tmp_path / "raft.db-wal"
    chunk = 32 << 10
    empty = db.stat().st_size
    wal_sizes = []
    for index in range(1, 9):
        rounds = store.checkpoint_rounds
        store.save(HardState(1, "a", 0), [Entry(index, 1, EntryKind.NORMAL, b"x" * chunk)])
        wait_for(
            lambda before=rounds: store.checkpoint_rounds > before, 10.0, f"a round after {index}"
        )
        wal_sizes.append(wal.stat().st_size)
    assert db.stat().st_size >= empty + 8 * chunk  # every save's pages are in the file
    assert wal_sizes[-1] == wal_sizes[0], f"the WAL grew instead of starting over: {wal_sizes}"
    store.close()
    assert not wal.exists()  # the last connection to close checkpoints and removes it
    names = [t.name for t in threading.enumerate()]
    assert f"tinyraft-checkpoint-{tmp_path.name}" not in names  # close() ended the thread
    reopened = SqliteLogStore.open(tmp_path)
    assert reopened.load()[2] == [Entry(i, 1, EntryKind.NORMAL, b"x" * chunk) for i in range(1, 9)]
    reopened.close()


def test_small_saves_are_checkpointed_before_the_writers_backstop(tmp_path: Path) -> None:
    """A save rewrites whole pages besides its payload: the trigger counts them, so the
    checkpointer's thread copies a WAL of small saves before the writer's own backstop
    (1,000 pages, ~430 saves like these) would stop a save to do it."""
    store = SqliteLogStore.open(tmp_path)
    for index in range(1, 301):
        store.save(HardState(1, "a", index - 1), [Entry(index, 1, EntryKind.NORMAL, b"x" * 100)])
    wait_for(lambda: store.checkpoint_rounds >= 1, 10.0, "a checkpoint round")
    store.close()


def test_a_failed_write_stops_the_store(tmp_path: Path) -> None:
    store = SqliteLogStore.open(tmp_path)
    store.save(HardState(1, "a", 0), batch(1, 10))
    # Damage the record behind the store's back; the conflict truncation must read it.
    with closing(sqlite3.connect(tmp_path / "raft.db")) as other, other:
        other.execute("UPDATE log SET crc = crc + 1")  # committed, then closed
    with pytest.raises(CorruptionError, match="fails its checksum"):
        store.save(HardState(2, "b", 0), batch(5, 1, term=2))
    with pytest.raises(StorageError, match="restart the member"):
        store.save(None, batch(11, 1))
    store.close()


def test_random_operations_match_a_reference_model(tmp_path: Path) -> None:
    rng = random.Random(11)
    store = SqliteLogStore.open(tmp_path)
    hs, snap, log = HardState(), None, list[Entry]()
    for step in range(400):
        last = log[-1].index if log else (snap.index if snap else 0)
        op = rng.random()
        if op < 0.15 and last > hs.commit:
            first = rng.randint(hs.commit + 1, last)
            hs = HardState(hs.term + 1, "b", hs.commit)
            new = batch(first, rng.randint(1, 30), term=hs.term)
            log = [e for e in log if e.index < first] + new
            store.save(hs, new)
        elif op < 0.25 and hs.commit > (snap.index if snap else 0):
            index = rng.randint(snap.index + 1 if snap else 1, hs.commit)
            term = next(e.term for e in log if e.index == index)
            snap = SnapshotMeta(index, term, CONFIG)
            log = [e for e in log if e.index > index]
            store.compact(snap)
        else:
            new = batch(last + 1, rng.randint(1, 30), term=hs.term)
            hs = HardState(hs.term, hs.vote, rng.randint(hs.commit, last))
            log += new
            store.save(hs, new, sync=rng.random() < 0.5)
        if step % 50 == 0:
            store = reopen(store)
        assert store.load() == (hs, snap, log)
    store.close()
