"""The in-memory Raft log of one member: entries after the latest snapshot.

Snapshots compact the log, so memory stays bounded; the durable copy lives in the
storage layer, which the runtime keeps in step through Ready.entries."""

from __future__ import annotations

from tinyraft.core.types import Configuration, Entry, EntryKind, SnapshotMeta


class RaftLog:
    __slots__ = ("_entries", "snapshot")

    def __init__(self, snapshot: SnapshotMeta, entries: list[Entry]) -> None:
        self.snapshot = snapshot  # the entries up to snapshot.index are compacted away
        self._entries = list(entries)
        if entries and entries[0].index != snapshot.index + 1:
            raise ValueError(
                f"log entries start at {entries[0].index}, expected {snapshot.index + 1}"
            )

    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot.term

    def term(self, index: int) -> int | None:
        """The term of the entry at index, or None when compacted or beyond the end."""
        offset = index - self.snapshot.index
        if offset == 0:
            return self.snapshot.term
        if 0 < offset <= len(self._entries):
            return self._entries[offset - 1].term
        return None

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def entry(self, index: int) -> Entry:
        return self._entries[index - self.snapshot.index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries lo..hi-1; with max_bytes, a prefix of at most that many data bytes
        (but never empty when lo < hi, so one large entry still makes progress)."""
        base = self.snapshot.index + 1
        ents = self._entries[max(lo - base, 0) : max(hi - base, 0)]
        if max_bytes is None or len(ents) <= 1:
            return ents
        size = 0
        for n, e in enumerate(ents):
            size += len(e.data)
            if size > max_bytes and n > 0:
                return ents[:n]
        return ents

    def append(self, entries: list[Entry]) -> None:
        self._entries.extend(entries)

    def find_conflict(self, entries: list[Entry]) -> int:
        """The index of the first entry that is new or disagrees with our log, or 0."""
        for e in entries:
            if self.term(e.index) != e.term:
                return e.index
        return 0

    def truncate_from(self, index: int) -> None:
        del self._entries[index - self.snapshot.index - 1 :]

    def compact(self, meta: SnapshotMeta) -> None:
        """Drop entries up to meta.index, which a snapshot now covers."""
        del self._entries[: meta.index - self.snapshot.index]
        self.snapshot = meta

    def reset(self, meta: SnapshotMeta) -> None:
        """Discard the whole log in favour of a snapshot (Figure 13, rule 7)."""
        self._entries = []
        self.snapshot = meta

    def hint_before(self, index: int, term: int) -> int:
        """The largest index <= index whose entry has a term <= term: where a log that
        disagrees at index can next be probed, skipping whole terms at once."""
        index = min(index, self.last_index)
        while index > self.snapshot.index:
            t = self.term(index)
            if t is not None and t <= term:
                return index
            index -= 1
        return index

    def latest_config(self) -> Configuration:
        """The configuration in force: the latest one appended, else the snapshot's."""
        for e in reversed(self._entries):
            if e.kind is EntryKind.CONFIG:
                return Configuration.decode(e.data)
        return self.snapshot.config

    def config_at(self, index: int) -> Configuration:
        """The configuration in force at index (for a snapshot taken there)."""
        for e in reversed(self._entries[: index - self.snapshot.index]):
            if e.kind is EntryKind.CONFIG:
                return Configuration.decode(e.data)
        return self.snapshot.config

    def last_config_index(self) -> int:
        for e in reversed(self._entries):
            if e.kind is EntryKind.CONFIG:
                return e.index
        return 0
