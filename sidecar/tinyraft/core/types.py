"""Values that flow in and out of the Raft core: entries, hard state, configurations,
messages and the Ready batch. Plain slotted dataclasses: cheap to build on the hot path
and easy to encode by the transport and storage layers."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

MemberId = str


class EntryKind(enum.IntEnum):
    NORMAL = 0  # a batch of client commands (see core.commands)
    NOOP = 1  # appended by every new leader so it can commit entries of earlier terms
    CONFIG = 2  # a new Configuration, effective as soon as it is appended


@dataclass(slots=True, frozen=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(slots=True, frozen=True)
class HardState:
    """What must be durable before a member answers a vote or an append."""

    term: int = 0
    vote: MemberId | None = None
    commit: int = 0


@dataclass(slots=True, frozen=True)
class Configuration:
    """Membership: voters elect and form quorums; learners only replicate. Addresses
    travel with the configuration so every member can reach every other; the core
    itself never reads them."""

    voters: frozenset[MemberId] = frozenset()
    learners: frozenset[MemberId] = frozenset()
    addresses: tuple[tuple[MemberId, str], ...] = ()  # sorted (member, address) pairs

    @property
    def members(self) -> frozenset[MemberId]:
        return self.voters | self.learners

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def address(self, member: MemberId) -> str | None:
        return dict(self.addresses).get(member)

    def with_members(
        self, voters: set[MemberId], learners: set[MemberId], new_addresses: dict[MemberId, str]
    ) -> Configuration:
        """A successor configuration; addresses of departed members are dropped."""
        members = voters | learners
        addresses = {m: a for m, a in self.addresses if m in members}
        addresses.update({m: a for m, a in new_addresses.items() if m in members})
        return Configuration(
            frozenset(voters), frozenset(learners), tuple(sorted(addresses.items()))
        )

    def encode(self) -> bytes:
        return json.dumps(
            {
                "voters": sorted(self.voters),
                "learners": sorted(self.learners),
                "addresses": dict(self.addresses),
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def decode(data: bytes) -> Configuration:
        raw = json.loads(data)
        return Configuration(
            frozenset(raw["voters"]),
            frozenset(raw["learners"]),
            tuple(sorted(raw.get("addresses", {}).items())),
        )


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    config: Configuration = field(default_factory=Configuration)


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# --- messages -------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    term: int
    src: MemberId
    dst: MemberId


@dataclass(slots=True)
class AppendEntries(Message):
    prev_index: int
    prev_term: int
    entries: list[Entry]
    commit: int


@dataclass(slots=True)
class AppendResponse(Message):
    success: bool
    # On success: the highest index known to match the leader's log.
    # On rejection: the index the leader asked about (prev_index), plus hints.
    index: int
    # Fast back-off: the follower's last index, and the term of its entry at
    # min(prev_index, last index), so the leader can skip a whole term at once.
    hint_index: int = 0
    hint_term: int = 0


@dataclass(slots=True)
class Heartbeat(Message):
    commit: int
    read_round: int = 0  # the leader's ReadIndex confirmation round


@dataclass(slots=True)
class HeartbeatResponse(Message):
    read_round: int = 0


@dataclass(slots=True)
class RequestVote(Message):
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # a leadership transfer: voters ignore their leader lease


@dataclass(slots=True)
class VoteResponse(Message):
    granted: bool
    pre_vote: bool = False


@dataclass(slots=True)
class InstallSnapshot(Message):
    meta: SnapshotMeta
    # Opaque to the core: the runtime attaches the snapshot's bytes (or a handle to
    # a streamed file) before sending and hands it back in Ready.snapshot. The runtime
    # may send its latest snapshot instead (meta and payload together): the core only
    # needs it to be at least as new as the one it asked for.
    payload: Any = None


@dataclass(slots=True)
class TimeoutNow(Message):
    pass


@dataclass(slots=True)
class ReadIndexRequest(Message):
    """A follower asks the leader for a read index on behalf of its callers."""

    context: int


@dataclass(slots=True)
class ReadIndexResponse(Message):
    context: int
    index: int  # 0 when the leader could not serve it (the follower's caller retries)


@dataclass(slots=True, frozen=True)
class ReadState:
    """A read may be served once the state machine has applied `index`.
    index == 0 means the read failed (no leader, leadership lost): retry elsewhere."""

    context: int
    index: int


@dataclass(slots=True)
class Ready:
    """Everything the runtime must do, in order: persist (hard_state, snapshot,
    entries; fsync when must_sync), send `messages`, apply `committed`, serve `reads`,
    then call Raft.advance(ready). `messages_now` may be sent before persisting: they
    are a leader's appends, which the leader counts for itself only once persisted
    (thesis §10.2.1)."""

    hard_state: HardState | None = None
    snapshot: InstallSnapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    messages_now: list[Message] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    role: Role | None = None  # set when the role changed
    leader: MemberId | None = None  # the known leader when role or leader changed
    must_sync: bool = False


# --- proposal errors ------------------------------------------------------------------


class ProposalError(Exception):
    """A proposal the core refused; nothing was appended."""

    retryable = True


class NotLeader(ProposalError):
    def __init__(self, leader: MemberId | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class TransferInProgress(ProposalError):
    def __init__(self) -> None:
        super().__init__("leadership transfer in progress; retry shortly")


class TooManyUncommitted(ProposalError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} uncommitted bytes pending; back off and retry")


class ConfigChangeRefused(ProposalError):
    """A membership change refused: for good (retryable False), or just not now."""

    def __init__(self, reason: str, retryable: bool = False) -> None:
        super().__init__(reason)
        self.retryable = retryable
