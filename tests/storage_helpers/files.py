"""File surgery for the torn-write and corruption tests: copy a live member's files as
a crash would leave them, locate SQLite WAL frames, flip and cut bytes."""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

WAL_HEADER = 32
FRAME_HEADER = 24


def copy_member(src: Path, dst: Path) -> Path:
    """Copy a data dir whose store is still open: what a SIGKILL would leave on disk
    (everything committed is in the db file or the WAL; -shm and LOCK are per process)."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name.endswith("-shm") or item.name == "LOCK":
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)
    return dst


@dataclass(frozen=True)
class Frame:
    offset: int
    size: int
    page: int
    commit: bool


def wal_frames(wal: bytes) -> list[Frame]:
    page_size = struct.unpack_from(">I", wal, 8)[0]
    size = FRAME_HEADER + page_size
    frames = []
    for offset in range(WAL_HEADER, len(wal) - size + 1, size):
        page, commit = struct.unpack_from(">II", wal, offset)
        frames.append(Frame(offset, size, page, commit != 0))
    return frames


def transactions(wal: bytes) -> list[list[Frame]]:
    """The WAL's frames grouped into transactions (each ends at a commit frame)."""
    groups: list[list[Frame]] = [[]]
    for frame in wal_frames(wal):
        groups[-1].append(frame)
        if frame.commit:
            groups.append([])
    return [g for g in groups if g]


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def cut(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)
