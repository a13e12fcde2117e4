"""Durable storage of a member: the Raft log and hard state (SQLite), snapshots (files),
and the data dir's identity. Start a member with DataDir.open(); see data_dir.py."""

from tinyraft.storage.data_dir import DataDir, Recovered
from tinyraft.storage.errors import (
    CompactedError,
    CorruptionError,
    DataDirLockedError,
    IdentityMismatchError,
    StorageError,
    UnsupportedFormatError,
)
from tinyraft.storage.identity import FORMAT_VERSION, Identity
from tinyraft.storage.log_store import LogStore, OnBytesWritten, OnFsync
from tinyraft.storage.snapshot_store import (
    SnapshotInfo,
    SnapshotReader,
    SnapshotStore,
    SnapshotWriter,
)
from tinyraft.storage.sqlite_log import SqliteLogStore

__all__ = [
    "FORMAT_VERSION",
    "CompactedError",
    "CorruptionError",
    "DataDir",
    "DataDirLockedError",
    "Identity",
    "IdentityMismatchError",
    "LogStore",
    "OnBytesWritten",
    "OnFsync",
    "Recovered",
    "SnapshotInfo",
    "SnapshotReader",
    "SnapshotStore",
    "SnapshotWriter",
    "SqliteLogStore",
    "StorageError",
    "UnsupportedFormatError",
]
