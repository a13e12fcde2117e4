"""A Module that lost its state is rebuilt from the latest snapshot and the log
(Applier._rebuild). A leader's snapshot may be installed meanwhile: it compacts the log
the rebuild is about to replay, and may prune the snapshot a retried restore is about
to read. The rebuild must start again from the newest snapshot, not stop the member.

Real storage (the SQLite log, snapshot files); stand-ins for the Module, which lets the
install land at the moment that matters, and for the Member's disk calls. In a cluster
the window is a few milliseconds wide and no test could aim at it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from test_applier_plan import Quiet
from tinyraft.core.sessions import Command, SessionTable, encode_batch
from tinyraft.core.types import Configuration, Entry, EntryKind, SnapshotMeta
from tinyraft.server.applier import _LEN, MAGIC, Applier
from tinyraft.server.module_client import ModuleUnavailable
from tinyraft.storage import DataDir

CONFIG = Configuration(voters=frozenset({"m"}))


class Module:
    """Holds the index of the state it was last restored to and what it applied since.
    `on_restore` runs once, inside the next restore: the install that lands then."""

    address = "in-process"

    def __init__(self) -> None:
        self.state: str | None = None
        self.applied: list[int] = []
        self.on_restore: Callable[[], Awaitable[None]] | None = None

    async def info(self) -> Any:
        return SimpleNamespace(applied_index=0)

    async def restore(self, index: int, chunks: Iterator[bytes]) -> None:
        data = b"".join(chunks)
        if self.on_restore is not None:
            landing, self.on_restore = self.on_restore, None
            await landing()
        self.state, self.applied = data.decode(), []

    async def apply(
        self, after: int, indexes: list[int], commands: list[bytes], last: int
    ) -> list[bytes]:
        self.applied += indexes
        return [b"ok"] * len(commands)


class Member:
    def __init__(self, data_dir: DataDir) -> None:
        self.data_dir = data_dir
        self.metrics = Quiet()

    async def storage(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def snapshot(data_dir: DataDir, index: int, term: int) -> None:
    """Commit a snapshot whose Module state names its index, as an install does."""
    writer = data_dir.snapshots.writer()
    sessions = SessionTable().encode()
    writer.write(MAGIC + _LEN.pack(len(sessions)) + sessions + b"state@%d" % index)
    writer.commit(SnapshotMeta(index, term, CONFIG))


def install(data_dir: DataDir, index: int, term: int) -> None:
    """What Member._install_snapshot does to the store: commit, then compact."""
    snapshot(data_dir, index, term)
    data_dir.log.compact(SnapshotMeta(index, term, CONFIG))


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    data_dir, _ = DataDir.open(tmp_path / "data", "c", "m")
    entries = [
        Entry(i, 1, EntryKind.NORMAL, encode_batch([Command(1, i, 0, b"put %d" % i)]))
        for i in range(1, 11)
    ]
    data_dir.log.save(None, entries, True)
    snapshot(data_dir, 3, 1)
    yield Member(data_dir)
    data_dir.close()


def rebuild(member: Member, module: Module) -> Applier:
    applier = Applier(member, module)  # type: ignore[arg-type]
    applier.applied = 10  # what the Module held before it lost its state
    asyncio.run(applier._rebuild())
    return applier


def test_a_rebuild_replays_the_log_above_the_latest_snapshot(member: Member) -> None:
    module = Module()
    applier = rebuild(member, module)
    assert (module.state, module.applied, applier.applied) == ("state@3", list(range(4, 11)), 10)


def test_a_snapshot_installed_during_the_restore_is_where_the_rebuild_ends(
    member: Member,
) -> None:
    module = Module()

    async def leader_installs() -> None:  # past this member's commit index, as always
        install(member.data_dir, 12, 2)

    module.on_restore = leader_installs
    applier = rebuild(member, module)
    assert (module.state, module.applied, applier.applied) == ("state@12", [], 12)


def test_a_retried_restore_whose_snapshot_was_pruned_starts_from_the_newest(
    member: Member,
) -> None:
    module = Module()

    async def module_down_while_two_snapshots_land() -> None:
        install(member.data_dir, 12, 2)
        install(member.data_dir, 15, 2)  # the store keeps two: the one at 3 is gone
        raise ModuleUnavailable("the Module is restarting")

    module.on_restore = module_down_while_two_snapshots_land
    applier = rebuild(member, module)
    assert (module.state, module.applied, applier.applied) == ("state@15", [], 15)
