"""The Raft core: a pure, deterministic state machine with no I/O, clock or asyncio.

Inputs are method calls (tick, step, propose, read_index, membership and transfer
requests); the output is a Ready value the runtime acts on, then acknowledges with
advance(). The simulator and the sidecar drive the very same object."""

from tinyraft.core.raft import Options, Raft
from tinyraft.core.types import (
    AppendEntries,
    AppendResponse,
    ConfigChangeRefused,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    NotLeader,
    ProposalError,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Ready,
    RequestVote,
    Role,
    SnapshotMeta,
    TimeoutNow,
    TooManyUncommitted,
    TransferInProgress,
    VoteResponse,
)

__all__ = [
    "AppendEntries",
    "AppendResponse",
    "ConfigChangeRefused",
    "Configuration",
    "Entry",
    "EntryKind",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "Message",
    "NotLeader",
    "Options",
    "ProposalError",
    "Raft",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ReadState",
    "Ready",
    "RequestVote",
    "Role",
    "SnapshotMeta",
    "TimeoutNow",
    "TooManyUncommitted",
    "TransferInProgress",
    "VoteResponse",
]
