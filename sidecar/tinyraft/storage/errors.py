"""Typed storage errors. Each message names the file or directory, what was found,
what was expected and what an operator should do, because these end a member's
start-up and the message is all the operator sees."""

from __future__ import annotations

import os

REBUILD_ADVICE = (
    "restore this member from a snapshot, or remove its data dir and rejoin it to the "
    "cluster as a new member (the other members still hold the data)"
)


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class CorruptionError(StorageError):
    """Stored state failed a check; the member must not serve from it."""

    def __init__(self, path: str | os.PathLike[str], problem: str, advice: str = REBUILD_ADVICE):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(
            f"corrupt storage in {self.path}: {problem}. Refusing to start from it: {advice}."
        )


class IdentityMismatchError(StorageError):
    """The data dir belongs to another cluster or member."""

    def __init__(self, path: str | os.PathLike[str], what: str, found: str, expected: str):
        self.path = os.fspath(path)
        self.what = what
        self.found = found
        self.expected = expected
        super().__init__(
            f"data dir {self.path} belongs to {what} {found!r}, but this member was started "
            f"as {what} {expected!r}. Refusing to start: point the member at its own data "
            f"dir, or remove {self.path} if it should join as a new member."
        )


class UnsupportedFormatError(StorageError):
    """The data dir was written in a format this build cannot read."""

    def __init__(self, path: str | os.PathLike[str], found: int, supported: int):
        self.path = os.fspath(path)
        self.found = found
        self.supported = supported
        newer = found > supported
        advice = (
            "it was written by a newer tinyraft: run that version (or newer) on it"
            if newer
            else "it was written by an older tinyraft that this build cannot read"
        )
        super().__init__(
            f"data dir {self.path} has storage format version {found}, this build supports "
            f"version {supported}. Refusing to start: {advice}."
        )


class DataDirLockedError(StorageError):
    """Another process holds the data dir."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        super().__init__(
            f"data dir {self.path} is in use by another process (its LOCK file is held). "
            "Refusing to start: stop the other member process first."
        )


class CompactedError(StorageError):
    """The requested entries were compacted into a snapshot: send the snapshot instead."""

    def __init__(self, index: int, snapshot_index: int):
        self.index = index
        self.snapshot_index = snapshot_index
        super().__init__(f"entry {index} was compacted (snapshot at {snapshot_index})")
