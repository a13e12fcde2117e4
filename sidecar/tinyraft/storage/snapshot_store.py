"""Snapshots as files, streamed in and out (a snapshot can be larger than memory).

Layout of the snapshots dir, for a snapshot at index I and term T:
    <I:020>-<T:020>-<token>.snap   the bytes (a fresh token per write, so re-writing the
                                   same index never overwrites the file a manifest names)
    <I:020>-<T:020>.json           the manifest: index, term, configuration, file, size,
                                   sha256, and a crc32 of the manifest itself

Commit protocol: data to `<token>.tmp`, fsync, rename to its `.snap` name, fsync the
dir; then the manifest the same way. The manifest is the commit point: at start-up
`*.tmp` files and `.snap` files no manifest names are torn writes and are removed.
A manifest naming a missing or wrong-sized file, or failing its own crc, is corruption.
The newest `keep` snapshots (default 2) are kept: the previous one can still be
streamed to a follower while the next is taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

from tinyraft.core.types import Configuration, SnapshotMeta
from tinyraft.storage.errors import CorruptionError, StorageError
from tinyraft.storage.fsutil import TMP_SUFFIX, atomic_write, fsync_dir

CHUNK_SIZE = 1 << 20
_MANIFEST = ".json"
_DATA = ".snap"


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    meta: SnapshotMeta
    size: int
    sha256: str
    path: Path  # the data file
    manifest: Path


class SnapshotStore:
    def __init__(self, directory: Path, keep: int):
        self.directory = directory
        self._keep = keep
        self._snapshots: list[SnapshotInfo] = []  # oldest first

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, keep: int = 2) -> SnapshotStore:
        """Open the dir, removing torn writes; manifests are checked, data is not read
        (call verify() for that)."""
        store = cls(Path(directory), keep)
        if not store.directory.is_dir():
            store.directory.mkdir(parents=True)
            fsync_dir(store.directory.parent)
        store._recover()
        return store

    def _recover(self) -> None:
        names = {p.name for p in self.directory.iterdir()}
        torn = {n for n in names if n.endswith(TMP_SUFFIX)}
        infos = [_read_manifest(self.directory / n) for n in names if n.endswith(_MANIFEST)]
        named = {info.path.name for info in infos}
        torn |= {n for n in names if n.endswith(_DATA) and n not in named}
        for info in infos:
            if info.path.name not in names:
                raise CorruptionError(info.manifest, f"the snapshot file {info.path} is missing")
            if (actual := info.path.stat().st_size) != info.size:
                raise CorruptionError(
                    info.path, f"the snapshot is {actual} bytes, its manifest says {info.size}"
                )
        for name in torn:
            (self.directory / name).unlink()
        if torn:
            fsync_dir(self.directory)
        self._snapshots = sorted(infos, key=lambda i: (i.meta.index, i.meta.term))

    def latest(self) -> SnapshotInfo | None:
        return self._snapshots[-1] if self._snapshots else None

    def list(self) -> list[SnapshotInfo]:
        """Committed snapshots, oldest first."""
        return list(self._snapshots)

    def writer(self) -> SnapshotWriter:
        return SnapshotWriter(self)

    def reader(self, info: SnapshotInfo, chunk_size: int = CHUNK_SIZE) -> SnapshotReader:
        return SnapshotReader(info, chunk_size)

    def verify(self, info: SnapshotInfo) -> None:
        """Read the whole snapshot; raise CorruptionError if it fails its checksum."""
        with self.reader(info) as chunks:
            for _ in chunks:
                pass

    def _commit(self, tmp: Path, size: int, sha256: str, meta: SnapshotMeta) -> SnapshotInfo:
        stem = f"{meta.index:020d}-{meta.term:020d}"
        info = SnapshotInfo(
            meta,
            size,
            sha256,
            self.directory / f"{stem}-{uuid.uuid4().hex[:12]}{_DATA}",
            self.directory / f"{stem}{_MANIFEST}",
        )
        os.replace(tmp, info.path)
        fsync_dir(self.directory)
        atomic_write(info.manifest, _encode_manifest(info))  # the commit point
        replaced = [s for s in self._snapshots if s.manifest == info.manifest]
        kept = sorted(
            [s for s in self._snapshots if s.manifest != info.manifest] + [info],
            key=lambda i: (i.meta.index, i.meta.term),
        )
        for old in kept[: -self._keep]:
            old.manifest.unlink()  # manifest first: a crash leaves a torn .snap, not a dangling manifest
            old.path.unlink()
        for old in replaced:
            old.path.unlink()
        if replaced or len(kept) > self._keep:
            fsync_dir(self.directory)
        self._snapshots = kept[-self._keep :]
        return info


class SnapshotWriter:
    """Feed chunks with write(), then commit(meta). Used as a context manager, leaving
    the block without commit() (or with an exception) discards the partial file."""

    def __init__(self, store: SnapshotStore):
        self._store = store
        self._tmp = store.directory / f"{uuid.uuid4().hex}{TMP_SUFFIX}"
        self._file: BinaryIO | None = self._tmp.open("xb")
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise StorageError("snapshot writer is already committed or aborted")
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    @property
    def size(self) -> int:
        return self._size

    @property
    def sha256(self) -> str:
        """Hex digest of what was written so far (check it before committing)."""
        return self._hash.hexdigest()

    def commit(self, meta: SnapshotMeta) -> SnapshotInfo:
        if self._file is None:
            raise StorageError("snapshot writer is already committed or aborted")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        return self._store._commit(self._tmp, self._size, self._hash.hexdigest(), meta)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class SnapshotReader:
    """Iterate to get the snapshot's chunks. The checksum can only be known at the end:
    the last step of the iteration raises CorruptionError if it does not match, so a
    consumer must treat the stream as good only once the iteration finished."""

    def __init__(self, info: SnapshotInfo, chunk_size: int):
        self.info = info
        self._chunk_size = chunk_size
        self._file: BinaryIO = info.path.open("rb")  # open now: a later prune cannot pull it away

    def __iter__(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        size = 0
        while chunk := self._file.read(self._chunk_size):
            digest.update(chunk)
            size += len(chunk)
            yield chunk
        if size != self.info.size or digest.hexdigest() != self.info.sha256:
            raise CorruptionError(
                self.info.path,
                f"the snapshot at index {self.info.meta.index} fails its SHA-256 checksum",
            )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _manifest_body(info: SnapshotInfo) -> dict[str, Any]:
    return {
        "index": info.meta.index,
        "term": info.meta.term,
        "config": json.loads(info.meta.config.encode()),  # voters, learners, addresses
        "file": info.path.name,
        "size": info.size,
        "sha256": info.sha256,
    }


def _body_crc(body: dict[str, Any]) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _encode_manifest(info: SnapshotInfo) -> bytes:
    body = _manifest_body(info)
    return json.dumps({**body, "crc32": _body_crc(body)}, indent=1, sort_keys=True).encode()


def _read_manifest(path: Path) -> SnapshotInfo:
    try:
        doc = json.loads(path.read_bytes())
        crc = doc.pop("crc32")
        if _body_crc(doc) != crc:
            raise CorruptionError(path, "the snapshot manifest fails its checksum")
        config = Configuration.decode(json.dumps(doc["config"]).encode())
        meta = SnapshotMeta(doc["index"], doc["term"], config)
        return SnapshotInfo(meta, doc["size"], doc["sha256"], path.parent / doc["file"], path)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptionError(path, f"the snapshot manifest is unreadable ({exc})") from exc
