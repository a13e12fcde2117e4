"""A member's data dir and its one start-up path.

    <data dir>/
      LOCK            flock-ed while a member process uses the dir
      identity.json   cluster id, member id, format version (identity.py)
      raft.db, -wal   log, hard state, compaction point (sqlite_log.py)
      snapshots/      snapshot files and manifests (snapshot_store.py)

DataDir.open() refuses a dir that is locked, of another cluster or member, of another
format, or damaged; removes torn snapshot writes; verifies the latest snapshot's
checksum; and finishes an interrupted compaction. To take or install a snapshot the
runtime commits it to `snapshots` first, then calls `log.compact(meta)`: a crash
between the two is rolled forward here, so the log never points at a missing snapshot.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from tinyraft.core.types import Entry, HardState
from tinyraft.storage.errors import (
    CorruptionError,
    DataDirLockedError,
    IdentityMismatchError,
    StorageError,
)
from tinyraft.storage.fsutil import fsync_dir
from tinyraft.storage.identity import (
    IDENTITY_FILE,
    Identity,
    check_identity,
    read_identity,
    write_identity,
)
from tinyraft.storage.log_store import OnBytesWritten, OnFsync
from tinyraft.storage.snapshot_store import SnapshotInfo, SnapshotStore
from tinyraft.storage.sqlite_log import SqliteLogStore

LOCK_FILE = "LOCK"
SNAPSHOT_DIR = "snapshots"


@dataclass(slots=True)
class Recovered:
    """What the member restarts from: restore `snapshot` (if any) into the Module, then
    the core starts with `hard_state` and `entries` (all entries after the snapshot)."""

    hard_state: HardState
    snapshot: SnapshotInfo | None
    entries: list[Entry]


class DataDir:
    def __init__(
        self,
        path: Path,
        lock_fd: int,
        identity: Identity,
        log: SqliteLogStore,
        snapshots: SnapshotStore,
    ):
        self.path = path
        self.identity = identity
        self.log = log
        self.snapshots = snapshots
        self._lock_fd = lock_fd

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        cluster_id: str,
        member_id: str | None,
        *,
        on_fsync: OnFsync | None = None,
        on_bytes_written: OnBytesWritten | None = None,
    ) -> tuple[DataDir, Recovered]:
        path = Path(path)
        if not path.is_dir():
            path.mkdir(parents=True)
            fsync_dir(path.parent)
        lock_fd = _lock(path)
        log: SqliteLogStore | None = None
        try:
            identity = read_identity(path)
            if identity is not None:
                check_identity(path, identity, cluster_id, member_id)
            snapshots = SnapshotStore.open(path / SNAPSHOT_DIR)
            log = SqliteLogStore.open(
                path,
                create=identity is None,
                on_fsync=on_fsync,
                on_bytes_written=on_bytes_written,
            )
            if identity is None:
                if member_id is None:
                    raise StorageError(
                        f"data dir {path} is new: give the member an id (NODE_ID) to create it"
                    )
                identity = _initialise(path, log, snapshots, cluster_id, member_id)
            recovered = _recover(log, snapshots)
            return cls(path, lock_fd, identity, log, snapshots), recovered
        except BaseException:
            if log is not None:
                log.close()
            os.close(lock_fd)
            raise

    def set_cluster_id(self, cluster_id: str) -> None:
        """Record the cluster this member bootstrapped or joined; set once, never changed."""
        if self.identity.cluster_id == cluster_id:
            return
        if self.identity.cluster_id:
            raise IdentityMismatchError(self.path, "cluster", self.identity.cluster_id, cluster_id)
        self.identity = Identity(cluster_id, self.identity.member_id)
        write_identity(self.path, self.identity)

    def close(self) -> None:
        self.log.close()
        os.close(self._lock_fd)  # releases the flock


def _lock(path: Path) -> int:
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLockedError(path) from None
    return fd


def _initialise(
    path: Path, log: SqliteLogStore, snapshots: SnapshotStore, cluster_id: str, member_id: str
) -> Identity:
    # The identity is written last, so a crash during a first start leaves an empty
    # log that the next start reuses; a log or snapshot *with* state but no identity
    # means the identity file was lost, and guessing whose state it is would be unsafe.
    hard_state, meta, entries = log.load()
    if hard_state != HardState() or meta is not None or entries or snapshots.list():
        raise CorruptionError(
            path / IDENTITY_FILE,
            "the identity file is missing but the data dir holds a raft log or snapshots",
        )
    identity = Identity(cluster_id, member_id)
    write_identity(path, identity)
    return identity


def _recover(log: SqliteLogStore, snapshots: SnapshotStore) -> Recovered:
    latest = snapshots.latest()
    if latest is not None:
        snapshots.verify(latest)
    hard_state, meta, entries = log.load()
    compacted = meta.index if meta is not None else 0
    if latest is not None and latest.meta.index > compacted:
        log.compact(latest.meta)  # finish a compaction or install cut short by a crash
        hard_state, meta, entries = log.load()
    elif meta is not None and (latest is None or latest.meta != meta):
        raise CorruptionError(
            snapshots.directory,
            f"the log was compacted up to index {meta.index} (term {meta.term}) but no "
            "snapshot with that index and term is in this directory",
        )
    while log.prune():  # what a compaction left below the snapshot when the process died
        pass
    return Recovered(hard_state, latest, entries)
