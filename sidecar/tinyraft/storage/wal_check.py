"""Tell a torn tail of SQLite's write-ahead log from damage in its middle.

SQLite's WAL recovery reads frames while their cumulative checksums hold and keeps
the transactions committed before the first bad frame. That is right for a torn
tail (the last transaction, cut by a crash) but silently drops acknowledged
transactions when a frame in the middle is damaged. So before SQLite opens the
database we walk the WAL ourselves (format:
https://www.sqlite.org/fileformat2.html#walformat):

1. follow the checksum chain as SQLite does: the valid prefix ends at the last good
   commit frame;
2. past it, look for *intact commit frames*: of this generation (matching salts),
   flagged as a commit, and whose checksum holds when seeded with the stored
   checksum of the frame before (the chain is cumulative, so damage earlier does
   not hide them);
3. none: a torn tail, SQLite drops it. Two or more: at least one transaction was
   committed after the damaged one: refuse. Exactly one: it ends either the damaged
   transaction itself (recover without it) or the next one, when the damage hit the
   damaged transaction's own commit frame. SQLite writes a page at most once per
   transaction, so a page number repeated before that commit frame means two
   transactions: refuse.

Why a crash never looks like damage: SQLite fsyncs each commit before the next
transaction begins, so only the last transaction can be torn, and a transaction cut
by a crash never wrote its commit frame. Its frames may stay behind, partly
overwritten by the transactions after recovery, but they hold no commit frame, and
a later committed transaction overwrites every leftover before its own commit frame.
The rule leans to refusing: a flip that merely makes a frame of the last
transaction repeat a page number of that transaction is refused too.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from tinyraft.storage.errors import CorruptionError

_HEADER = struct.Struct(">8I")
_FRAME = struct.Struct(">6I")
_MAGIC_LE, _MAGIC_BE = 0x377F0682, 0x377F0683
_VERSION = 3007000
_MASK = 0xFFFFFFFF


def wal_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-wal")


def check_wal(db_path: Path) -> None:
    """Raise CorruptionError if committed transactions follow damage in db_path's WAL."""
    path = wal_path(db_path)
    try:
        with path.open("rb") as f:
            if f.seek(0, 2) == 0:
                return  # created, never written
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as wal:
                _check(path, wal)
    except FileNotFoundError:
        pass


def _check(path: Path, wal: mmap.mmap) -> None:
    if len(wal) < _HEADER.size:
        return  # the header is written and synced before any frame
    magic, version, page_size, _, salt1, salt2, c1, c2 = _HEADER.unpack_from(wal, 0)
    if (
        magic not in (_MAGIC_LE, _MAGIC_BE)
        or version != _VERSION
        or page_size & (page_size - 1)
        or not 512 <= page_size <= 65536
    ):
        raise CorruptionError(path, "the write-ahead log header is damaged")
    words = struct.Struct(("<" if magic == _MAGIC_LE else ">") + f"{page_size // 4}I")
    if _checksum(words, wal, 0, 6, 0, 0) != (c1, c2):
        raise CorruptionError(path, "the write-ahead log header fails its checksum")

    frame_size = _FRAME.size + page_size
    frames = (len(wal) - _HEADER.size) // frame_size  # a trailing partial frame is torn
    offset = [_HEADER.size + i * frame_size for i in range(frames)]

    # 1. SQLite's own walk: the valid prefix ends at the last good commit frame.
    s1, s2 = c1, c2
    valid_end = 0
    damaged = frames
    for i in range(frames):
        _, commit, f1, f2, k1, k2 = _FRAME.unpack_from(wal, offset[i])
        if (f1, f2) != (salt1, salt2):
            damaged = i
            break
        s1, s2 = _frame_checksum(words, wal, offset[i], s1, s2)
        if (s1, s2) != (k1, k2):
            damaged = i
            break
        if commit:
            valid_end = i + 1

    # 2. Intact commit frames past the valid prefix.
    commits = []
    for i in range(valid_end, frames):
        _, commit, f1, f2, k1, k2 = _FRAME.unpack_from(wal, offset[i])
        if commit and (f1, f2) == (salt1, salt2):
            p1, p2 = _FRAME.unpack_from(wal, offset[i - 1])[4:] if i else (c1, c2)
            if _frame_checksum(words, wal, offset[i], p1, p2) == (k1, k2):
                commits.append(i)

    # 3. Decide.
    if len(commits) > 1:
        _refuse(path, damaged, offset)
    if commits:
        pages = [
            pgno
            for pgno, _, f1, f2, _, _ in (
                _FRAME.unpack_from(wal, offset[i]) for i in range(valid_end, commits[0] + 1)
            )
            if (f1, f2) == (salt1, salt2)
        ]
        if len(pages) != len(set(pages)):
            _refuse(path, damaged, offset)


def _refuse(path: Path, damaged: int, offset: list[int]) -> None:
    where = f"frame {damaged + 1} (byte {offset[damaged]})"
    raise CorruptionError(
        path,
        f"the write-ahead log is damaged at {where} and committed transactions follow "
        "the damage, so SQLite would silently drop acknowledged writes",
    )


def _frame_checksum(
    words: struct.Struct, wal: mmap.mmap, off: int, s1: int, s2: int
) -> tuple[int, int]:
    s1, s2 = _checksum(words, wal, off, 2, s1, s2)  # page number and commit size
    return _checksum(words, wal, off + _FRAME.size, words.size // 4, s1, s2)


def _checksum(
    words: struct.Struct, buf: mmap.mmap, off: int, count: int, s1: int, s2: int
) -> tuple[int, int]:
    if count == words.size // 4:
        data = words.unpack_from(buf, off)
    else:
        data = struct.unpack_from(words.format[0] + f"{count}I", buf, off)
    it = iter(data)
    for a, b in zip(it, it, strict=True):
        s1 = (s1 + a + s2) & _MASK
        s2 = (s2 + b + s1) & _MASK
    return s1, s2
