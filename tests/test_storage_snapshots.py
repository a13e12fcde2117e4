"""Snapshot store on real files: streaming, keep-last-two, torn writes, checksums, and
the data dir's start-up handling of snapshots (verify, roll forward a compaction)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from storage_helpers.files import cut, flip
from tinyraft.core.types import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from tinyraft.storage import CorruptionError, DataDir, SnapshotStore, StorageError

CONFIG = Configuration(frozenset({"a", "b"}), frozenset({"c"}))


def meta(index: int, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(index, term, CONFIG)


def write(store: SnapshotStore, m: SnapshotMeta, data: bytes, chunk: int = 1000) -> None:
    with store.writer() as writer:
        for at in range(0, len(data), chunk):
            writer.write(data[at : at + chunk])
        writer.commit(m)


def read(store: SnapshotStore, index: int, chunk_size: int = 4096) -> bytes:
    info = next(i for i in store.list() if i.meta.index == index)
    with store.reader(info, chunk_size) as chunks:
        return b"".join(chunks)


def test_streaming_write_and_read_larger_than_a_chunk(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = hashlib.sha256()
    with store.writer() as writer:
        for at in range(0, len(data), 65536):
            writer.write(data[at : at + 65536])
        info = writer.commit(meta(10))
    digest.update(data)
    assert info.size == len(data) and info.sha256 == digest.hexdigest()
    with store.reader(info, chunk_size=1 << 20) as reader:
        chunks = list(reader)
    assert len(chunks) == 4 and b"".join(chunks) == data
    reopened = SnapshotStore.open(tmp_path)
    assert reopened.latest() == info


def test_only_the_last_two_snapshots_are_kept(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    for index in (5, 10, 15, 20):
        write(store, meta(index), b"state at %d" % index)
    assert [i.meta.index for i in store.list()] == [15, 20]
    assert sorted(p.name[:20] for p in tmp_path.iterdir()) == [
        "00000000000000000015",
        "00000000000000000015",
        "00000000000000000020",
        "00000000000000000020",
    ]
    reopened = SnapshotStore.open(tmp_path)
    assert [i.meta for i in reopened.list()] == [meta(15), meta(20)]
    assert read(reopened, 20) == b"state at 20"


def test_rewriting_the_same_snapshot_replaces_it(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    write(store, meta(5), b"first")
    write(store, meta(5), b"second")
    assert len(store.list()) == 1 and read(store, 5) == b"second"
    assert len(list(tmp_path.iterdir())) == 2


def test_an_aborted_writer_leaves_nothing(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    with pytest.raises(RuntimeError), store.writer() as writer:
        writer.write(b"partial")
        raise RuntimeError("the Module's stream broke")
    assert list(tmp_path.iterdir()) == [] and store.latest() is None
    with store.writer() as writer:
        writer.commit(meta(3))
        with pytest.raises(StorageError):
            writer.write(b"late")


def test_torn_writes_are_removed_at_start(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    write(store, meta(5), b"kept")
    # A crash while streaming: a temp file. A crash after the rename but before the
    # manifest: a data file no manifest names. A crash while writing the manifest.
    (tmp_path / "4f2a.tmp").write_bytes(b"half a snapsh")
    (tmp_path / "00000000000000000009-00000000000000000001-abcdef.snap").write_bytes(b"whole")
    (tmp_path / "00000000000000000009-00000000000000000001.json.tmp").write_bytes(b'{"ind')
    reopened = SnapshotStore.open(tmp_path)
    assert [i.meta for i in reopened.list()] == [meta(5)]
    assert len(list(tmp_path.iterdir())) == 2
    assert read(reopened, 5) == b"kept"


def test_a_flipped_byte_fails_the_checksum_at_the_end_of_the_stream(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    data = os.urandom(50_000)
    write(store, meta(7), data)
    info = store.list()[0]
    flip(info.path, 25_000)
    reader = store.reader(info, chunk_size=8192)
    chunks = iter(reader)
    got = [next(chunks) for _ in range(7)]  # every chunk is delivered ...
    with pytest.raises(CorruptionError, match="fails its SHA-256 checksum") as error:
        next(chunks)  # ... and the end of the stream says it was bad
    reader.close()
    assert len(b"".join(got)) == len(data)
    assert str(info.path) in str(error.value)


def test_damaged_manifests_and_cut_files_are_refused(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    write(store, meta(7), b"x" * 1000)
    info = store.list()[0]
    cut(info.path, 999)
    with pytest.raises(CorruptionError, match="999 bytes, its manifest says 1000"):
        SnapshotStore.open(tmp_path)
    cut(info.path, 0)
    info.path.write_bytes(b"x" * 1000)
    raw = info.manifest.read_bytes()
    info.manifest.write_bytes(raw.replace(b'"index": 7', b'"index": 8'))
    with pytest.raises(CorruptionError, match="manifest fails its checksum"):
        SnapshotStore.open(tmp_path)
    info.manifest.write_bytes(raw[:-5])
    with pytest.raises(CorruptionError, match="manifest is unreadable"):
        SnapshotStore.open(tmp_path)
    info.manifest.write_bytes(raw)
    info.path.unlink()
    with pytest.raises(CorruptionError, match="is missing"):
        SnapshotStore.open(tmp_path)


# --- the data dir's start-up ---------------------------------------------------------


def entries(first: int, count: int) -> list[Entry]:
    return [Entry(i, 1, EntryKind.NORMAL, b"%d" % i) for i in range(first, first + count)]


def test_start_refuses_a_snapshot_that_fails_its_checksum(tmp_path: Path) -> None:
    dd, _ = DataDir.open(tmp_path, "c", "m")
    dd.log.save(HardState(1, "m", 10), entries(1, 20))
    write(dd.snapshots, meta(10), os.urandom(100_000))
    dd.log.compact(meta(10))
    path = dd.snapshots.latest().path  # type: ignore[union-attr]
    dd.close()
    flip(path, 60_000)
    with pytest.raises(CorruptionError) as error:
        DataDir.open(tmp_path, "c", "m")
    assert str(path) in str(error.value) and "fails its SHA-256 checksum" in str(error.value)
    assert "Refusing to start" in str(error.value)


def test_start_finishes_a_compaction_cut_short_by_a_crash(tmp_path: Path) -> None:
    dd, _ = DataDir.open(tmp_path, "c", "m")
    dd.log.save(HardState(1, "m", 15), entries(1, 20))
    write(dd.snapshots, meta(12), b"state at 12")  # ... and the crash before compact()
    dd.close()
    dd, recovered = DataDir.open(tmp_path, "c", "m")
    assert recovered.snapshot is not None and recovered.snapshot.meta == meta(12)
    assert recovered.entries == entries(13, 8)
    assert dd.log.load()[1] == meta(12)
    dd.close()


def test_start_refuses_a_log_compacted_past_every_snapshot(tmp_path: Path) -> None:
    dd, _ = DataDir.open(tmp_path, "c", "m")
    dd.log.save(HardState(1, "m", 15), entries(1, 20))
    write(dd.snapshots, meta(12), b"state at 12")
    dd.log.compact(meta(12))
    snapshot = dd.snapshots.latest()
    dd.close()
    assert snapshot is not None
    snapshot.manifest.unlink()
    with pytest.raises(CorruptionError, match="compacted up to index 12"):
        DataDir.open(tmp_path, "c", "m")


def test_start_after_a_crash_mid_snapshot_uses_the_previous_one(tmp_path: Path) -> None:
    dd, _ = DataDir.open(tmp_path, "c", "m")
    dd.log.save(HardState(1, "m", 15), entries(1, 20))
    write(dd.snapshots, meta(8), b"state at 8")
    dd.log.compact(meta(8))
    writer = dd.snapshots.writer()
    writer.write(b"half of the state at 15")  # ... and the process dies here
    dd.close()
    dd, recovered = DataDir.open(tmp_path, "c", "m")
    assert recovered.snapshot is not None and recovered.snapshot.meta == meta(8)
    assert recovered.entries == entries(9, 12)
    assert not list((tmp_path / "snapshots").glob("*.tmp"))
    dd.close()
