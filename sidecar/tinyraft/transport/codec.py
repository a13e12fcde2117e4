"""Core messages to and from their protobuf form (peer.proto).

The core's dataclasses stay free of protobuf; this is the only place that knows both.
Entries are the hot path: they are converted with as little Python per entry as
protobuf allows."""

from __future__ import annotations

from tinyraft.core.types import (
    AppendEntries,
    AppendResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from tinyraft.v1 import peer_pb2 as pb

_KINDS = (EntryKind.NORMAL, EntryKind.NOOP, EntryKind.CONFIG)
_PB_KINDS = (pb.ENTRY_KIND_NORMAL, pb.ENTRY_KIND_NOOP, pb.ENTRY_KIND_CONFIG)


def entries_to_proto(entries: list[Entry]) -> list[pb.Entry]:
    return [
        pb.Entry(index=e.index, term=e.term, kind=_PB_KINDS[e.kind], data=e.data) for e in entries
    ]


def entries_from_proto(entries: object) -> list[Entry]:
    return [Entry(e.index, e.term, _KINDS[e.kind], e.data) for e in entries]  # type: ignore[attr-defined]


def to_proto(m: Message) -> pb.RaftMessage:
    out = pb.RaftMessage(term=m.term, src=m.src, dst=m.dst)
    if isinstance(m, AppendEntries):
        a = out.append
        a.prev_index, a.prev_term, a.commit = m.prev_index, m.prev_term, m.commit
        a.entries.extend(entries_to_proto(m.entries))
        a.SetInParent()  # an empty append (commit only) is still an append
    elif isinstance(m, AppendResponse):
        out.append_response.CopyFrom(
            pb.AppendResponse(
                success=m.success, index=m.index, hint_index=m.hint_index, hint_term=m.hint_term
            )
        )
    elif isinstance(m, Heartbeat):
        out.heartbeat.CopyFrom(pb.Heartbeat(commit=m.commit, read_round=m.read_round))
    elif isinstance(m, HeartbeatResponse):
        out.heartbeat_response.CopyFrom(pb.HeartbeatResponse(read_round=m.read_round))
    elif isinstance(m, RequestVote):
        out.request_vote.CopyFrom(
            pb.RequestVote(
                last_index=m.last_index,
                last_term=m.last_term,
                pre_vote=m.pre_vote,
                transfer=m.transfer,
            )
        )
    elif isinstance(m, VoteResponse):
        out.vote_response.CopyFrom(pb.VoteResponse(granted=m.granted, pre_vote=m.pre_vote))
    elif isinstance(m, TimeoutNow):
        out.timeout_now.SetInParent()
    elif isinstance(m, ReadIndexRequest):
        out.read_index.CopyFrom(pb.ReadIndexRequest(context=m.context))
    elif isinstance(m, ReadIndexResponse):
        out.read_index_response.CopyFrom(pb.ReadIndexResponse(context=m.context, index=m.index))
    else:
        raise TypeError(f"{type(m).__name__} does not travel as a RaftMessage")
    return out


def from_proto(p: pb.RaftMessage) -> Message:
    """Raises ValueError for a message with no (or an unknown) body."""
    kind = p.WhichOneof("body")
    term, src, dst = p.term, p.src, p.dst
    if kind == "append":
        a = p.append
        return AppendEntries(
            term, src, dst, a.prev_index, a.prev_term, entries_from_proto(a.entries), a.commit
        )
    if kind == "append_response":
        r = p.append_response
        return AppendResponse(term, src, dst, r.success, r.index, r.hint_index, r.hint_term)
    if kind == "heartbeat":
        return Heartbeat(term, src, dst, p.heartbeat.commit, p.heartbeat.read_round)
    if kind == "heartbeat_response":
        return HeartbeatResponse(term, src, dst, p.heartbeat_response.read_round)
    if kind == "request_vote":
        v = p.request_vote
        return RequestVote(term, src, dst, v.last_index, v.last_term, v.pre_vote, v.transfer)
    if kind == "vote_response":
        return VoteResponse(term, src, dst, p.vote_response.granted, p.vote_response.pre_vote)
    if kind == "timeout_now":
        return TimeoutNow(term, src, dst)
    if kind == "read_index":
        return ReadIndexRequest(term, src, dst, p.read_index.context)
    if kind == "read_index_response":
        r2 = p.read_index_response
        return ReadIndexResponse(term, src, dst, r2.context, r2.index)
    raise ValueError(f"a RaftMessage from {src!r} carries no known body")
