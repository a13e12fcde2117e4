"""Which cluster and member a data dir belongs to, and the format it is written in.

`identity.json` in the data dir, written atomically once when the member is first
initialised, with a crc32 of its fields. A member refuses to start on a data dir of
another cluster or member, or of a format this build cannot read.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from tinyraft.storage.errors import CorruptionError, IdentityMismatchError, UnsupportedFormatError
from tinyraft.storage.fsutil import TMP_SUFFIX, atomic_write

FORMAT_VERSION = 1
IDENTITY_FILE = "identity.json"


@dataclass(frozen=True, slots=True)
class Identity:
    cluster_id: str
    member_id: str
    format_version: int = FORMAT_VERSION


def read_identity(data_dir: Path) -> Identity | None:
    """The data dir's identity, or None if it was never initialised."""
    path = data_dir / IDENTITY_FILE
    path.with_name(IDENTITY_FILE + TMP_SUFFIX).unlink(missing_ok=True)  # a torn write
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        version = doc["format_version"]
        if isinstance(version, int) and version > FORMAT_VERSION:
            # checked before the crc: a newer format may checksum differently
            raise UnsupportedFormatError(data_dir, version, FORMAT_VERSION)
        crc = doc.pop("crc32")
        if _crc(doc) != crc:
            raise CorruptionError(path, "the identity file fails its checksum")
        identity = Identity(doc["cluster_id"], doc["member_id"], version)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptionError(path, f"the identity file is unreadable ({exc})") from exc
    if identity.format_version != FORMAT_VERSION:
        raise UnsupportedFormatError(data_dir, identity.format_version, FORMAT_VERSION)
    return identity


def check_identity(data_dir: Path, found: Identity, cluster_id: str, member_id: str | None) -> None:
    """An empty cluster_id (or member_id None) means "whatever the data dir holds":
    a member learns its cluster when it bootstraps or joins."""
    if cluster_id and found.cluster_id != cluster_id:
        raise IdentityMismatchError(data_dir, "cluster", found.cluster_id, cluster_id)
    if member_id is not None and found.member_id != member_id:
        raise IdentityMismatchError(data_dir, "member", found.member_id, member_id)


def write_identity(data_dir: Path, identity: Identity) -> None:
    doc = asdict(identity)
    atomic_write(data_dir / IDENTITY_FILE, json.dumps({**doc, "crc32": _crc(doc)}).encode())


def _crc(doc: dict[str, object]) -> int:
    return zlib.crc32(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
