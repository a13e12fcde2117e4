"""The data dir's identity: a member refuses a dir of another cluster or member, of a
newer format, held by another process, or whose identity is damaged or missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinyraft.core.types import Entry, EntryKind, HardState
from tinyraft.storage import (
    FORMAT_VERSION,
    CorruptionError,
    DataDir,
    DataDirLockedError,
    IdentityMismatchError,
    UnsupportedFormatError,
)


def initialised(path: Path) -> Path:
    dd, _ = DataDir.open(path, "cluster-a", "m1")
    dd.log.save(HardState(1, "m1", 0), [Entry(1, 1, EntryKind.NOOP, b"")])
    dd.close()
    return path


def test_a_fresh_dir_is_claimed_and_reopened(tmp_path: Path) -> None:
    path = initialised(tmp_path / "member")
    doc = json.loads((path / "identity.json").read_text())
    assert (doc["cluster_id"], doc["member_id"], doc["format_version"]) == (
        "cluster-a",
        "m1",
        FORMAT_VERSION,
    )
    dd, recovered = DataDir.open(path, "cluster-a", "m1")
    assert dd.identity.member_id == "m1" and recovered.hard_state == HardState(1, "m1", 0)
    dd.close()


def test_another_clusters_dir_is_refused(tmp_path: Path) -> None:
    path = initialised(tmp_path / "member")
    with pytest.raises(IdentityMismatchError) as error:
        DataDir.open(path, "cluster-b", "m1")
    message = str(error.value)
    assert str(path) in message
    assert (
        "belongs to cluster 'cluster-a'" in message and "started as cluster 'cluster-b'" in message
    )
    assert "Refusing to start" in message and "own data dir" in message


def test_another_members_dir_is_refused(tmp_path: Path) -> None:
    path = initialised(tmp_path / "member")
    with pytest.raises(IdentityMismatchError) as error:
        DataDir.open(path, "cluster-a", "m2")
    assert "belongs to member 'm1'" in str(error.value)
    assert "started as member 'm2'" in str(error.value)
    assert (error.value.found, error.value.expected) == ("m1", "m2")


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = initialised(tmp_path / "member")
    doc = json.loads((path / "identity.json").read_text())
    doc["format_version"] = FORMAT_VERSION + 1
    (path / "identity.json").write_text(json.dumps(doc))
    with pytest.raises(UnsupportedFormatError) as error:
        DataDir.open(path, "cluster-a", "m1")
    message = str(error.value)
    assert f"format version {FORMAT_VERSION + 1}" in message and str(path) in message
    assert "newer tinyraft" in message


def test_a_damaged_identity_is_refused(tmp_path: Path) -> None:
    path = initialised(tmp_path / "member")
    raw = (path / "identity.json").read_bytes()
    (path / "identity.json").write_bytes(raw.replace(b"m1", b"m7"))
    with pytest.raises(CorruptionError, match="identity file fails its checksum"):
        DataDir.open(path, "cluster-a", "m7")
    (path / "identity.json").write_bytes(raw[:10])
    with pytest.raises(CorruptionError, match="identity file is unreadable"):
        DataDir.open(path, "cluster-a", "m1")


def test_state_without_an_identity_is_refused(tmp_path: Path) -> None:
    path = initialised(tmp_path / "member")
    (path / "identity.json").unlink()
    with pytest.raises(CorruptionError, match="identity file is missing but the data dir holds"):
        DataDir.open(path, "cluster-a", "m1")


def test_an_identity_without_its_database_is_refused(tmp_path: Path) -> None:
    path = initialised(tmp_path / "member")
    (path / "raft.db").unlink()
    with pytest.raises(CorruptionError, match="log database is missing"):
        DataDir.open(path, "cluster-a", "m1")


def test_a_first_start_cut_short_before_the_identity_is_resumed(tmp_path: Path) -> None:
    path = initialised(tmp_path / "member")
    (path / "raft.db").unlink()
    (path / "identity.json").unlink()
    dd, recovered = DataDir.open(path, "cluster-b", "m3")
    assert dd.identity.cluster_id == "cluster-b" and recovered.entries == []
    dd.close()


def test_a_dir_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    path = initialised(tmp_path / "member")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tinyraft.storage import DataDir;"
            f"DataDir.open({str(path)!r}, 'cluster-a', 'm1'); print('open', flush=True);"
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        with pytest.raises(DataDirLockedError, match="in use by another process"):
            DataDir.open(path, "cluster-a", "m1")
    finally:
        holder.kill()
        holder.wait()
    DataDir.open(path, "cluster-a", "m1")[0].close()  # the lock died with its holder
