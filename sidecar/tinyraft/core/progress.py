"""A leader's view of one follower: how far it matches, and how to send it more.

PROBE sends one append at a time until the follower's log position is found;
REPLICATE streams appends optimistically with a bounded window of messages in
flight; SNAPSHOT waits while a snapshot is being streamed to it."""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.StrEnum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "acked_round",
        "inflight",
        "match",
        "max_inflight",
        "next",
        "probe_sent",
        "recent_active",
        "snapshot_index",
        "snapshot_ticks",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.snapshot_index = 0  # the snapshot being sent, in SNAPSHOT state
        self.snapshot_ticks = 0  # how long that has taken
        self.inflight: deque[int] = deque()  # last index of each append in flight
        self.max_inflight = max_inflight
        self.recent_active = False  # heard from within this election timeout (check-quorum)
        self.acked_round = 0  # the latest ReadIndex round it confirmed

    def paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def become_probe(self) -> None:
        # After a snapshot, probe from just past it; otherwise from past the match.
        self.next = max(self.match + 1, self.snapshot_index + 1)
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.snapshot_index = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self.state = ProgressState.REPLICATE
        self.probe_sent = False
        self.snapshot_index = 0
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = index
        self.snapshot_ticks = 0
        self.inflight.clear()

    def sent(self, last: int) -> None:
        """An append ending at `last` went out."""
        if self.state is ProgressState.REPLICATE:
            self.next = last + 1
            self.inflight.append(last)
        else:
            self.probe_sent = True

    def acknowledge(self, index: int) -> bool:
        """The follower matches up to index. Returns whether that is news."""
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        self.probe_sent = False
        return True

    def reject(self, rejected: int, next_index: int) -> bool:
        """The follower refused an append after `rejected`; try from next_index.
        Returns False for a stale rejection that says nothing new."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.become_probe()
            self.next = max(self.match + 1, min(next_index, rejected))
            return True
        if rejected != self.next - 1:
            return False
        self.next = max(self.match + 1, min(next_index, rejected))
        self.probe_sent = False
        return True
