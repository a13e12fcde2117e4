"""The five Raft safety properties (Raft paper, Figure 3), checked as the simulation runs.

Each check raises SafetyViolation naming the property and the evidence."""

from __future__ import annotations

from tinyraft.core.log import RaftLog
from tinyraft.core.types import Entry


class SafetyViolation(AssertionError):
    pass


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}  # term -> the leader elected in it
        self.entries: dict[
            tuple[int, int], tuple[bytes, int]
        ] = {}  # (index, term) -> (data, prev term)
        self.committed: dict[int, int] = {}  # index -> term of the entry committed there
        self.applied: dict[int, tuple[int, bytes]] = {}  # index -> (term, data) applied there
        self.leader_logs: dict[
            tuple[str, int], tuple[int, int]
        ] = {}  # (member, term) -> (last index, its term)

    def elected(self, member: str, term: int, log: RaftLog) -> None:
        """Election Safety, then Leader Completeness for the new leader."""
        other = self.leaders.setdefault(term, member)
        if other != member:
            raise SafetyViolation(f"Election Safety: {other} and {member} both lead term {term}")
        for index, t in self.committed.items():
            if index > log.snapshot.index and log.term(index) != t:
                raise SafetyViolation(
                    f"Leader Completeness: leader {member} of term {term} lacks committed "
                    f"entry {index} (term {t}); it has term {log.term(index)}"
                )

    def leader_log(self, member: str, term: int, log: RaftLog) -> None:
        """Leader Append-Only: a leader's log only grows during its term."""
        key = (member, term)
        prev = self.leader_logs.get(key)
        if prev is not None:
            last, last_term = prev
            t = log.term(last)
            if log.last_index < last or (t is not None and t != last_term):
                raise SafetyViolation(
                    f"Leader Append-Only: leader {member} of term {term} lost or rewrote entry {last}"
                )
        self.leader_logs[key] = (log.last_index, log.last_term)

    def appended(self, member: str, entries: list[Entry], log: RaftLog) -> None:
        """Log Matching: one (index, term) is one entry with one history behind it."""
        for e in entries:
            prev_term = log.term(e.index - 1)
            if prev_term is None:
                continue  # behind a snapshot; the snapshot was checked when committed
            seen = self.entries.setdefault((e.index, e.term), (e.data, prev_term))
            if seen != (e.data, prev_term):
                raise SafetyViolation(
                    f"Log Matching: {member} holds entry {e.index} of term {e.term} that "
                    f"differs from another member's (data or preceding term)"
                )

    def commit(self, member: str, log: RaftLog, old: int, new: int) -> None:
        for index in range(max(old + 1, log.first_index), new + 1):
            t = log.term(index)
            assert t is not None
            if self.committed.setdefault(index, t) != t:
                raise SafetyViolation(
                    f"commit safety: {member} committed term {t} at {index}, "
                    f"another member committed term {self.committed[index]}"
                )

    def apply(self, member: str, entry: Entry) -> None:
        """State Machine Safety: every member applies the same entry at an index."""
        seen = self.applied.setdefault(entry.index, (entry.term, entry.data))
        if seen != (entry.term, entry.data):
            raise SafetyViolation(
                f"State Machine Safety: {member} applied entry {entry.index} of term "
                f"{entry.term}, another member applied term {seen[0]} there"
            )
