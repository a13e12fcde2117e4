"""Encoding of log records and their checksums.

A *record* is one `save()` batch of contiguous entries, stored as one SQLite row
(first, last, payload, crc). Storing a batch per row instead of an entry per row keeps
the per-entry cost of an append to a struct.pack and a join (see benchmarks/
storage_bench.py); range reads and truncation cut records at entry boundaries.

payload = for each entry: <term u64><kind u8><len u32> data   (little-endian)
crc     = zlib.crc32(payload, zlib.crc32(<first u64><last u64>))

CRC-32 (zlib) was chosen because it is in the standard library and runs at memory
speed; it detects every burst error up to 32 bits, which is the failure it guards
against (flipped or torn bytes), not tampering.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from tinyraft.core.types import Entry, EntryKind

_HEADER = struct.Struct("<QBI")
_BOUNDS = struct.Struct("<QQ")
_KINDS = {kind.value: kind for kind in EntryKind}


class MalformedRecord(ValueError):
    """A record that passed its checksum but cannot be decoded (a bug or a foreign format)."""


def encode_batch(entries: Sequence[Entry]) -> bytes:
    pack = _HEADER.pack
    return b"".join([pack(e.term, e.kind, len(e.data)) + e.data for e in entries])


def batch_crc(first: int, last: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_BOUNDS.pack(first, last)))


def decode_batch(first: int, last: int, payload: bytes, lo: int, hi: int, out: list[Entry]) -> None:
    """Append the record's entries with lo <= index < hi to `out`."""
    unpack = _HEADER.unpack_from
    size = _HEADER.size
    end = len(payload)
    off = 0
    index = first
    try:
        while off < end:
            term, kind, length = unpack(payload, off)
            off += size
            if index >= lo:
                if index >= hi:
                    return
                out.append(Entry(index, term, _KINDS[kind], payload[off : off + length]))
            off += length
            index += 1
    except (struct.error, KeyError) as exc:
        raise MalformedRecord(f"record {first}..{last} is malformed at entry {index}") from exc
    if off != end or index != last + 1:
        raise MalformedRecord(f"record {first}..{last} holds entries {first}..{index - 1}")


def entry_offset(first: int, payload: bytes, index: int) -> tuple[int, int]:
    """(byte offset, term) of entry `index` inside a record starting at `first`."""
    off = 0
    for _ in range(index - first):
        off += _HEADER.size + _HEADER.unpack_from(payload, off)[2]
    return off, _HEADER.unpack_from(payload, off)[0]


def hard_state_crc(term: int, vote: bytes | None, commit: int) -> int:
    return zlib.crc32(
        b"\x00" if vote is None else b"\x01" + vote, zlib.crc32(_BOUNDS.pack(term, commit))
    )


def snapshot_crc(index: int, term: int, config: bytes) -> int:
    return zlib.crc32(config, zlib.crc32(_BOUNDS.pack(index, term)))
