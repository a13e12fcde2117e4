"""Client sessions for exactly-once commands (Raft thesis §6.3).

Every command carries (client id, sequence number, ack_below): ack_below is the
lowest sequence the client has not yet seen answered, so results below it can be
forgotten. The table lives in the replicated state (it is applied from the log and
saved in snapshots), so every member deduplicates the same way. Expiry is driven by
log indexes, never a local clock, so it is deterministic on every member."""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import NamedTuple

# A NORMAL entry's data is a batch of runs: the marker, a u32 count of commands in
# all, then each run as (client id, first sequence, ack_below, n), the n payloads'
# lengths (u32 each) and the payloads. Runs cost 4 bytes and one slice per command
# to write and read, against 28 bytes and a struct call in the first format, which
# logs written before still hold: a u32 count of commands, then one (client id,
# sequence, ack_below, payload length) record and the payload per command.
_RUNS_MARKER = b"\xff\xff\xff\xff"  # never a count: no entry holds 2^32-1 commands
_RUN = struct.Struct("<QQQI")  # also the first format's per-command record
_COUNT = struct.Struct("<I")


class Command(NamedTuple):  # a tuple: one is made per command on every member
    client: int
    seq: int
    ack_below: int
    payload: bytes


class Run(NamedTuple):
    """Consecutive commands of one client, numbered first_seq, first_seq + 1, ..., with
    one ack_below: what one request's commands are (encode_run), so most batches are a
    few runs. The table and the applier take a run in one step, not one per command."""

    client: int
    first_seq: int
    ack_below: int
    payloads: list[bytes]

    def commands(self) -> list[Command]:
        c, a = self.client, self.ack_below
        return [Command(c, seq, a, p) for seq, p in enumerate(self.payloads, self.first_seq)]


def encode_run(
    client: int,
    first_seq: int,
    ack_below: int,
    payloads: Sequence[bytes],
    sizes: Sequence[int] | None = None,
) -> bytes:
    """The record of one session's commands numbered first_seq, first_seq + 1, ...;
    `sizes` are the payloads' lengths when the caller has them already."""
    n = len(payloads)
    lengths = struct.pack(f"<{n}I", *(sizes if sizes is not None else map(len, payloads)))
    return b"".join((_RUN.pack(client, first_seq, ack_below, n), lengths, *payloads))


def encode_records(commands: Iterable[Command]) -> bytes:
    """Commands as run records (each run as long as it can be), to be joined into a
    batch with join_records."""
    runs: list[Run] = []
    for c in commands:
        last = runs[-1] if runs else None
        if (
            last is not None
            and (c.client, c.ack_below) == (last.client, last.ack_below)
            and c.seq == last.first_seq + len(last.payloads)
        ):
            last.payloads.append(c.payload)
        else:
            runs.append(Run(c.client, c.seq, c.ack_below, [c.payload]))
    return b"".join([encode_run(*run) for run in runs])


def join_records(records: Iterable[bytes], count: int) -> bytes:
    """One batch (a NORMAL entry's data) from records (encode_run, encode_records)
    holding `count` commands in all."""
    return _RUNS_MARKER + _COUNT.pack(count) + b"".join(records)


def encode_batch(commands: list[Command]) -> bytes:
    return join_records((encode_records(commands),), len(commands))


def decode_runs(data: bytes) -> list[Run]:
    """A batch's commands, in runs. ValueError if malformed."""
    try:
        if data[:4] == _RUNS_MARKER:
            runs, pos = _decode_runs(data)
        else:
            runs, pos = _decode_first_format(data)
    except struct.error as err:
        raise ValueError(f"malformed command batch: {err}") from None
    if pos != len(data):
        raise ValueError("malformed command batch: trailing or missing bytes")
    return runs


def _decode_runs(data: bytes) -> tuple[list[Run], int]:
    runs: list[Run] = []
    (count,) = _COUNT.unpack_from(data, len(_RUNS_MARKER))
    pos, end = len(_RUNS_MARKER) + _COUNT.size, len(data)
    unpack = _RUN.unpack_from
    while count > 0:
        client, first_seq, ack_below, n = unpack(data, pos)
        if n == 0:
            raise ValueError("malformed command batch: a run of no commands")
        if first_seq + n > 1 << 64:
            raise ValueError("malformed command batch: sequence numbers past 2^64-1")
        pos += _RUN.size
        lengths = struct.unpack_from(f"<{n}I", data, pos)
        offsets = list(accumulate(lengths, initial=pos + 4 * n))
        runs.append(Run(client, first_seq, ack_below, [data[a:b] for a, b in pairwise(offsets)]))
        pos = offsets[-1]
        count -= n
        if pos > end or count < 0:
            raise ValueError("malformed command batch: more commands than its count")
    return runs, pos


def _decode_first_format(data: bytes) -> tuple[list[Run], int]:
    (count,) = _COUNT.unpack_from(data, 0)
    pos = _COUNT.size
    runs: list[Run] = []
    unpack, size = _RUN.unpack_from, _RUN.size
    client = next_seq = ack = -1
    payloads: list[bytes] = []
    for _ in range(count):
        c, seq, a, n = unpack(data, pos)
        pos += size
        if c != client or seq != next_seq or a != ack:
            payloads = []
            runs.append(Run(c, seq, a, payloads))
            client, ack = c, a
        payloads.append(data[pos : pos + n])
        next_seq = seq + 1
        pos += n
    return runs, pos


def decode_batch(data: bytes) -> list[Command]:
    """A batch's commands, one by one."""
    return [cmd for run in decode_runs(data) for cmd in run.commands()]


class Verdict(enum.Enum):
    NEW = "new"  # apply it, then record the result
    DUPLICATE = "duplicate"  # already applied: answer with the cached result
    STALE = "stale"  # the client already acknowledged this sequence's answer
    EXPIRED = "expired"  # the session was forgotten: the client must start a new one


@dataclass(slots=True)
class _Session:
    results: dict[int, bytes] = field(default_factory=dict)
    acked: int = 1  # every sequence below this has been answered and forgotten
    last_index: int = 0  # log index of the session's latest command


class SessionTable:
    def __init__(self, max_sessions: int = 65536, ttl_entries: int = 1_000_000) -> None:
        self.max_sessions = max_sessions
        self.ttl_entries = ttl_entries
        self._sessions: OrderedDict[int, _Session] = OrderedDict()  # least recently active first
        self._tombstones: OrderedDict[int, None] = OrderedDict()  # forgotten clients, oldest first
        self._expired_at = -1  # the log index sessions were last expired at

    def __len__(self) -> int:
        return len(self._sessions)

    def check(self, cmd: Command, index: int) -> tuple[Verdict, bytes]:
        """What to do with a committed command at log `index`."""
        return self._judge(cmd, index, False)

    def admit(self, cmd: Command, index: int) -> tuple[Verdict, bytes]:
        """check(), and a NEW command is recorded at once with its result to come
        (fill): how a member runs a whole batch through the table before the Module
        applies it, in one pass."""
        return self._judge(cmd, index, True)

    def admit_run(self, run: Run, index: int) -> bool:
        """admit() for every command of the run, in one step, when each would be NEW
        in a session that exists: True, and they are recorded. Otherwise False, and
        nothing changed but the expiry at `index` (which admit() would do first
        anyway): admit them one by one."""
        self._expire_once(index)
        s = self._sessions.get(run.client)
        if s is None:
            return False  # a new session (or an expired one): the rare path
        seqs = range(run.first_seq, run.first_seq + len(run.payloads))
        results = s.results
        # Each command would first raise acked (only the first can: one ack_below),
        # forgetting results below it, then find no cached result and no stale seq.
        if run.first_seq < max(s.acked, run.ack_below) or not results.keys().isdisjoint(seqs):
            return False
        self._sessions.move_to_end(run.client)
        s.last_index = index
        if run.ack_below > s.acked:
            s.acked = run.ack_below
            for seq in [q for q in results if q < s.acked]:
                del results[seq]
        results.update(dict.fromkeys(seqs, b""))
        return True

    def fill_run(self, run: Run, results: Sequence[bytes]) -> None:
        """Set the results of a run's commands recorded before their results were known
        (the sidecar admits a whole batch, then asks the Module). Gone sessions and
        results stay gone."""
        s = self._sessions.get(run.client)
        if s is None:
            return
        recorded = s.results
        for seq, result in enumerate(results, run.first_seq):
            if seq in recorded:
                recorded[seq] = result

    def _expire_once(self, index: int) -> None:
        if index != self._expired_at:  # expiry depends on the index alone: once per entry
            self._expire(index)
            self._expired_at = index

    def _judge(self, cmd: Command, index: int, admit: bool) -> tuple[Verdict, bytes]:
        self._expire_once(index)
        s = self._sessions.get(cmd.client)
        if s is None:
            if cmd.ack_below > 1 or cmd.client in self._tombstones:
                return Verdict.EXPIRED, b""
            if admit:
                self.record(cmd, index, b"")
            return Verdict.NEW, b""
        self._sessions.move_to_end(cmd.client)
        s.last_index = index
        if cmd.ack_below > s.acked:
            s.acked = cmd.ack_below
            for seq in [q for q in s.results if q < s.acked]:
                del s.results[seq]
        cached = s.results.get(cmd.seq)
        if cached is not None:
            return Verdict.DUPLICATE, cached
        if cmd.seq < s.acked:
            return Verdict.STALE, b""
        if admit:
            s.results[cmd.seq] = b""
        return Verdict.NEW, b""

    def record(self, cmd: Command, index: int, result: bytes) -> None:
        s = self._sessions.get(cmd.client)
        if s is None:
            s = self._sessions[cmd.client] = _Session(acked=max(cmd.ack_below, 1))
        s.last_index = index
        s.results[cmd.seq] = result
        self._sessions.move_to_end(cmd.client)
        while len(self._sessions) > self.max_sessions:
            self._forget(next(iter(self._sessions)))

    def _expire(self, index: int) -> None:
        sessions = self._sessions
        while sessions:
            client, s = next(iter(sessions.items()))
            if index - s.last_index <= self.ttl_entries:
                return
            self._forget(client)

    def _forget(self, client: int) -> None:
        # A forgotten client may still retry a command whose answer it never saw:
        # remembering its id (a bounded while) turns that retry into EXPIRED instead
        # of applying it twice.
        del self._sessions[client]
        self._tombstones[client] = None
        if len(self._tombstones) > self.max_sessions:
            self._tombstones.popitem(last=False)

    # Sessions travel inside snapshots, so their encoding is part of the format.
    def encode(self) -> bytes:
        parts = [_COUNT.pack(len(self._sessions))]
        for client, s in self._sessions.items():
            parts.append(struct.pack("<QQQI", client, s.acked, s.last_index, len(s.results)))
            for seq, result in s.results.items():
                parts.append(struct.pack("<QI", seq, len(result)))
                parts.append(result)
        parts.append(_COUNT.pack(len(self._tombstones)))
        parts.append(struct.pack(f"<{len(self._tombstones)}Q", *self._tombstones))
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        self._sessions = OrderedDict()
        self._tombstones = OrderedDict()
        self._expired_at = -1
        (count,) = _COUNT.unpack_from(data, 0)
        pos = _COUNT.size
        for _ in range(count):
            client, acked, last_index, n = struct.unpack_from("<QQQI", data, pos)
            pos += 28
            s = _Session(acked=acked, last_index=last_index)
            for _ in range(n):
                seq, size = struct.unpack_from("<QI", data, pos)
                pos += 12
                s.results[seq] = data[pos : pos + size]
                pos += size
            self._sessions[client] = s
        (count,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        clients = struct.unpack_from(f"<{count}Q", data, pos)
        self._tombstones = OrderedDict.fromkeys(clients)
