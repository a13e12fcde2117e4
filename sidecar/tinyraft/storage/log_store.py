"""The interface the runtime persists through, so that another engine can be measured
against SQLite later. An engine is opened with its own constructor, e.g.

    SqliteLogStore.open(data_dir, *, create=True, on_fsync=None, on_bytes_written=None)

where on_fsync(seconds) and on_bytes_written(n) are metrics hooks called after each
save (on_fsync only when it synced). A member normally gets its store, with its
snapshots and identity checked, from DataDir.open() (data_dir.py).

    load() -> (HardState, SnapshotMeta | None, list[Entry])
        What a member restarts from: hard state, the metadata of the snapshot the log
        was last compacted to, and every entry after it. Every record's checksum is
        verified; damage raises CorruptionError.
    save(hard_state: HardState | None, entries: Sequence[Entry], sync: bool = True)
        One transaction, so one fsync when `sync`: the entries (contiguous; if the first
        index is <= the last stored index the stored suffix from there is replaced,
        Raft's conflict truncation) and the hard state land together or not at all.
        sync=False may be lost in a crash but never reorders or tears: a later synced
        save makes it durable too.
    entries(lo: int, hi: int) -> list[Entry]
        Entries lo <= index < hi, for followers that are behind. Raises CompactedError
        when lo is covered by the snapshot: send the snapshot instead.
    compact(meta: SnapshotMeta)
        Record that a snapshot covers the log up to meta.index. If the log holds that
        entry with meta.term, entries <= meta.index are dropped; otherwise (a snapshot
        from the leader that conflicts with or runs past this log) the whole log is.
        Always synced. Records wholly below the snapshot may be left for prune().
    prune() -> bool
        Delete some of the records compact() left below the snapshot; True while more
        remain. A few megabytes at a time, so that the runtime's appends (queued on
        the same thread) wait for one short step, never for a whole compaction.
    close()

Calls must not overlap: the runtime calls the store from one executor thread at a time
(implementations still lock, so a stray concurrent call waits instead of interleaving).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from tinyraft.core.types import Entry, HardState, SnapshotMeta

# Metrics hooks, called after each save: how long the durable commit took (the fsync
# and the writes it flushes), and how many record bytes it wrote.
OnFsync = Callable[[float], None]
OnBytesWritten = Callable[[int], None]


class LogStore(Protocol):
    def load(self) -> tuple[HardState, SnapshotMeta | None, list[Entry]]: ...

    def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool = True
    ) -> None: ...

    def entries(self, lo: int, hi: int) -> list[Entry]: ...

    def compact(self, meta: SnapshotMeta) -> None: ...

    def prune(self) -> bool: ...

    def close(self) -> None: ...
