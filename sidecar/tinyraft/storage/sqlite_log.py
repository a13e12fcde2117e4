"""LogStore on SQLite (stdlib sqlite3): one database file, `raft.db`, per member.

Tables: `log` (one row per saved batch, see codec.py), `hard_state` and `snapshot`
(one row each, with their own CRC-32). WAL journal, synchronous=FULL: a commit
fsyncs the WAL, so one save() is one transaction and one fsync (group commit).
Saves with sync=False run at synchronous=NORMAL, which skips the commit fsync but
keeps checkpoints synced, so earlier fsynced saves stay durable. Checkpoints run on a
thread of their own (checkpointer.py), not inside a save.

Start-up checks, in order (each failure raises CorruptionError naming the file):
- the WAL is walked before SQLite opens it (wal_check.py): a torn last transaction
  is left to SQLite to drop, damage followed by committed transactions is refused;
- PRAGMA quick_check: the B-tree structure of every page, including pages load()
  never reads (free list, overflow chains). Cheap because a record is a whole batch:
  20 ms for a 56 MB log of 400K entries, where load() itself takes 0.9 s;
- the schema, compared whole (damage can leave it parseable, with a renamed column);
- the hard-state and snapshot rows, and in load() every log record: column types,
  CRC, and indexes contiguous from the snapshot on. A flipped byte inside entry data
  passes quick_check and is caught here.
SQLITE_CORRUPT and SQLITE_NOTADB become CorruptionError whenever they surface, and so
does a plain SQLITE_ERROR during open, where our fixed statements only fail on a
damaged file ("unsupported file format", a schema that lost a column). Checked by
fuzzing (tests/test_storage_torn.py): damage anywhere in the file either refuses to
start or leaves the recovered state exactly as it was.

After any StorageError from save() or compact() the store refuses further calls:
the state on disk is unknown (an fsync that failed cannot be retried safely), so
the member must restart and recover from disk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tinyraft.core.types import Configuration, Entry, HardState, SnapshotMeta
from tinyraft.storage.checkpointer import BACKSTOP_PAGES, Checkpointer
from tinyraft.storage.codec import (
    MalformedRecord,
    batch_crc,
    decode_batch,
    encode_batch,
    entry_offset,
    hard_state_crc,
    snapshot_crc,
)
from tinyraft.storage.errors import (
    CompactedError,
    CorruptionError,
    StorageError,
    UnsupportedFormatError,
)
from tinyraft.storage.fsutil import fsync_dir
from tinyraft.storage.log_store import OnBytesWritten, OnFsync
from tinyraft.storage.wal_check import check_wal

DB_NAME = "raft.db"
SCHEMA_VERSION = 1

_TABLES = {
    "log": "CREATE TABLE log (first INTEGER PRIMARY KEY, last INTEGER NOT NULL,"
    " payload BLOB NOT NULL, crc INTEGER NOT NULL)",
    "hard_state": "CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " term INTEGER NOT NULL, vote BLOB, commit_index INTEGER NOT NULL, crc INTEGER NOT NULL)",
    "snapshot": "CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " idx INTEGER NOT NULL, term INTEGER NOT NULL, config BLOB NOT NULL, crc INTEGER NOT NULL)",
}
PRUNE_RECORDS = 64  # records deleted per prune() step: a few MB, a few ms
_INSERT = "INSERT INTO log (first, last, payload, crc) VALUES (?, ?, ?, ?)"
_PUT_HARD_STATE = "INSERT OR REPLACE INTO hard_state VALUES (1, ?, ?, ?, ?)"
_PUT_SNAPSHOT = "INSERT OR REPLACE INTO snapshot VALUES (1, ?, ?, ?, ?)"
_ROW_AT = "SELECT first, last, payload, crc FROM log WHERE first <= ? ORDER BY first DESC LIMIT 1"
_ROWS = (
    "SELECT first, last, payload, crc FROM log"
    " WHERE first >= (SELECT coalesce(max(first), 0) FROM log WHERE first <= ?) AND first < ?"
    " ORDER BY first"
)
_LOG_TYPES = ((int,), (int,), (bytes,), (int,))
_HARD_STATE_TYPES = ((int,), (bytes, type(None)), (int,), (int,))
_SNAPSHOT_TYPES = ((int,), (int,), (bytes,), (int,))
_MAX_INDEX = 2**63 - 1
_SQLITE_ERROR = 1
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_Row = tuple[int, int, bytes, int]


class SqliteLogStore:
    """See log_store.LogStore for the contract. Build with SqliteLogStore.open()."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        on_fsync: OnFsync | None,
        on_bytes_written: OnBytesWritten | None,
    ):
        self.path = path
        self._conn = conn
        self._on_fsync = on_fsync
        self._on_bytes_written = on_bytes_written
        self._lock = threading.Lock()
        self._synchronous_full = True
        self._failed: BaseException | None = None
        self._hard_state = HardState()
        self._snapshot: SnapshotMeta | None = None
        self._last = 0
        self._commit_seconds = 0.0
        self._checkpointer: Checkpointer | None = None  # started once the file checks out

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        create: bool = True,
        on_fsync: OnFsync | None = None,
        on_bytes_written: OnBytesWritten | None = None,
    ) -> SqliteLogStore:
        """Open (or, with create, make) data_dir/raft.db. Without create a missing or
        empty database is corruption: the caller knows the member has state."""
        data_dir = Path(data_dir)
        path = data_dir / DB_NAME
        existed = path.exists()
        if not existed and not create:
            raise CorruptionError(path, "the log database is missing")
        check_wal(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        store = cls(path, conn, on_fsync, on_bytes_written)
        try:
            with store._sqlite_errors(opening=True):
                store._setup(create)
            if not existed:
                fsync_dir(data_dir)
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            store._checkpointer = Checkpointer(path, page_size)
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self, create: bool) -> None:
        conn = self._conn
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise StorageError(f"{self.path}: SQLite refused WAL mode")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA cell_size_check = ON")
        # Some builds (Debian's) zero every freed page by default: pruning the log below
        # a snapshot then wrote twice as many bytes to the WAL as it freed, which the
        # next append's fsync waited for. The pruned entries live on in the snapshot.
        conn.execute("PRAGMA secure_delete = OFF")
        conn.execute("PRAGMA journal_size_limit = 67108864")  # shrink the WAL after big batches
        conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")  # see checkpointer.py
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise CorruptionError(self.path, "SQLite quick_check: " + "; ".join(problems[:5]))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            if not create:
                raise CorruptionError(self.path, "the log database is empty (no schema)")
            with self._transaction():
                for statement in _TABLES.values():
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise UnsupportedFormatError(self.path, version, SCHEMA_VERSION)
        # A damaged schema can still parse (a renamed column), so compare it whole.
        schema = dict(
            conn.execute("SELECT CAST(name AS BLOB), CAST(sql AS BLOB) FROM sqlite_schema")
        )
        if schema != {name.encode(): sql.encode() for name, sql in _TABLES.items()}:
            raise CorruptionError(self.path, f"the schema is damaged: {sorted(schema.items())}")
        self._read_state()

    def _read_state(self) -> None:
        row = self._conn.execute(
            "SELECT term, vote, commit_index, crc FROM hard_state WHERE id = 1"
        ).fetchone()
        if row is not None:
            self._check_types(row, _HARD_STATE_TYPES, "the hard state")
            if hard_state_crc(row[0], row[1], row[2]) != row[3]:
                raise CorruptionError(self.path, "the hard state (term, vote) fails its checksum")
            vote = row[1].decode() if row[1] is not None else None
            self._hard_state = HardState(row[0], vote, row[2])
        row = self._conn.execute(
            "SELECT idx, term, config, crc FROM snapshot WHERE id = 1"
        ).fetchone()
        if row is not None:
            self._check_types(row, _SNAPSHOT_TYPES, "the snapshot record")
            if snapshot_crc(row[0], row[1], row[2]) != row[3]:
                raise CorruptionError(self.path, "the snapshot record fails its checksum")
            self._snapshot = SnapshotMeta(row[0], row[1], Configuration.decode(row[2]))
        row = self._conn.execute(_ROW_AT, (_MAX_INDEX,)).fetchone()
        if row is not None:
            self._verify(*row)
        # (records below the snapshot may wait for prune(): the log ends at it, then)
        self._last = max(row[1], self._snapshot_index) if row is not None else self._snapshot_index

    @property
    def _snapshot_index(self) -> int:
        return self._snapshot.index if self._snapshot is not None else 0

    # --- reads ------------------------------------------------------------------------

    def load(self) -> tuple[HardState, SnapshotMeta | None, list[Entry]]:
        with self._lock, self._sqlite_errors():
            self._check_usable()
            entries = self._read(self._snapshot_index + 1, self._last + 1)
            return self._hard_state, self._snapshot, entries

    def entries(self, lo: int, hi: int) -> list[Entry]:
        with self._lock, self._sqlite_errors():
            self._check_usable()
            if lo <= self._snapshot_index:
                raise CompactedError(lo, self._snapshot_index)
            if hi > self._last + 1:
                raise ValueError(f"entries up to {hi - 1} requested, the log ends at {self._last}")
            return self._read(lo, hi)

    def _read(self, lo: int, hi: int) -> list[Entry]:
        out: list[Entry] = []
        if lo >= hi:
            return out
        expected = lo
        for first, last, payload, crc in self._conn.execute(_ROWS, (lo, hi)):
            self._verify(first, last, payload, crc)
            if first > expected:
                raise CorruptionError(self.path, f"log entries {expected}..{first - 1} are missing")
            if first < expected and expected != lo:  # only the first record may start before lo
                raise CorruptionError(self.path, f"log records overlap at entry {first}")
            try:
                decode_batch(first, last, payload, lo, hi, out)
            except MalformedRecord as exc:
                raise CorruptionError(self.path, str(exc)) from exc
            expected = last + 1
        if expected < hi:
            raise CorruptionError(self.path, f"log entries {expected}..{hi - 1} are missing")
        return out

    def _check_types(
        self, row: tuple[object, ...], types: tuple[tuple[type, ...], ...], what: str
    ) -> None:
        # A damaged cell header can turn a BLOB into TEXT or an integer into NULL.
        for value, allowed in zip(row, types, strict=True):
            if type(value) not in allowed:
                raise CorruptionError(self.path, f"{what} has a damaged column")

    def _verify(self, first: int, last: int, payload: bytes, crc: int) -> None:
        self._check_types((first, last, payload, crc), _LOG_TYPES, "a log record")
        if batch_crc(first, last, payload) != crc:
            raise CorruptionError(
                self.path, f"the log record holding entries {first}..{last} fails its checksum"
            )

    def _row_at(self, index: int) -> _Row:
        row: _Row | None = self._conn.execute(_ROW_AT, (index,)).fetchone()
        if row is not None:
            self._verify(*row)
        if row is None or row[1] < index:
            raise CorruptionError(self.path, f"log entry {index} is missing")
        return row

    # --- writes -----------------------------------------------------------------------

    def save(
        self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool = True
    ) -> None:
        with self._lock:
            self._check_usable()
            if hard_state == self._hard_state:
                hard_state = None
            if hard_state is None and not entries:
                return
            last = self._validate(entries) if entries else self._last
            written = 0
            with self._poison_on_error(), self._sqlite_errors():
                self._set_sync(sync)
                with self._transaction():
                    if entries:
                        first = entries[0].index
                        if first <= self._last:
                            self._truncate_from(first)
                        payload = encode_batch(entries)
                        crc = batch_crc(first, last, payload)
                        self._conn.execute(_INSERT, (first, last, payload, crc))
                        written += len(payload)
                    if hard_state is not None:
                        self._put_hard_state(hard_state)
                        written += 24 + len(hard_state.vote or "")  # 3 integers + vote
            self._last = last
            if hard_state is not None:
                self._hard_state = hard_state
            commit_seconds = self._commit_seconds
            self._committed(written)
        if sync and self._on_fsync is not None:
            self._on_fsync(commit_seconds)
        if self._on_bytes_written is not None:
            self._on_bytes_written(written)

    def _validate(self, entries: Sequence[Entry]) -> int:
        first = entries[0].index
        last = first + len(entries) - 1
        if [e.index for e in entries] != list(range(first, last + 1)):
            raise ValueError("entries to save must have contiguous indexes")
        if first <= self._snapshot_index:
            raise ValueError(f"entry {first} is covered by the snapshot at {self._snapshot_index}")
        if first > self._last + 1:
            raise ValueError(f"entry {first} would leave a gap after the last entry {self._last}")
        if first <= self._last and first <= self._hard_state.commit:
            raise ValueError(f"entry {first} is committed and cannot be replaced")
        return last

    def _truncate_from(self, index: int) -> None:
        first, _, payload, _ = self._row_at(index)
        self._conn.execute("DELETE FROM log WHERE first >= ?", (index,))
        if first < index:  # cut the record that holds the conflict
            kept = payload[: entry_offset(first, payload, index)[0]]
            crc = batch_crc(first, index - 1, kept)
            self._conn.execute(
                "UPDATE log SET last = ?, payload = ?, crc = ? WHERE first = ?",
                (index - 1, kept, crc, first),
            )

    def _put_hard_state(self, hs: HardState) -> None:
        vote = hs.vote.encode() if hs.vote is not None else None
        crc = hard_state_crc(hs.term, vote, hs.commit)
        self._conn.execute(_PUT_HARD_STATE, (hs.term, vote, hs.commit, crc))

    def compact(self, meta: SnapshotMeta) -> None:
        with self._lock:
            self._check_usable()
            if meta.index > self._snapshot_index:
                with self._poison_on_error(), self._sqlite_errors():
                    self._compact(meta)
                self._committed(0)

    def _compact(self, meta: SnapshotMeta) -> None:
        self._set_sync(True)
        keep_suffix = False
        with self._transaction():
            if meta.index <= self._last:
                first, last, payload, _ = self._row_at(meta.index)
                _, term = entry_offset(first, payload, meta.index)
                keep_suffix = term == meta.term
            if keep_suffix:
                # Only the record that straddles the snapshot is rewritten here; the
                # records wholly below it are never read again and go in prune()'s
                # short steps (deleting 60 MB at once held the disk thread ~300 ms).
                if last > meta.index:
                    self._conn.execute("DELETE FROM log WHERE first = ?", (first,))
                    offset, _ = entry_offset(first, payload, meta.index + 1)
                    rest = payload[offset:]
                    crc = batch_crc(meta.index + 1, last, rest)
                    self._conn.execute(_INSERT, (meta.index + 1, last, rest, crc))
            else:  # Raft: a snapshot that does not match the log replaces all of it
                self._conn.execute("DELETE FROM log")
            config = meta.config.encode()
            crc = snapshot_crc(meta.index, meta.term, config)
            self._conn.execute(_PUT_SNAPSHOT, (meta.index, meta.term, config, crc))
        self._snapshot = meta
        if not keep_suffix:
            self._last = meta.index

    def close(self) -> None:
        with self._lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._conn.close()  # the last connection checkpoints and removes the WAL

    # --- plumbing ---------------------------------------------------------------------

    def prune(self, records: int = PRUNE_RECORDS) -> bool:
        with self._lock:
            self._check_usable()
            with self._poison_on_error(), self._sqlite_errors():
                self._set_sync(False)  # below the snapshot: nothing to make durable
                with self._transaction():
                    deleted = self._conn.execute(
                        # after compact() the records starting at or below the
                        # snapshot are exactly those wholly below it (rowid order)
                        "DELETE FROM log WHERE first IN"
                        " (SELECT first FROM log WHERE first <= ? ORDER BY first LIMIT ?)",
                        (self._snapshot_index, records),
                    ).rowcount
                self._committed(0)
                return bool(deleted == records)

    def _committed(self, payload_bytes: int) -> None:
        if self._checkpointer is not None:
            self._checkpointer.committed(payload_bytes)

    @property
    def checkpoint_rounds(self) -> int:
        """Rounds the checkpointer's thread ended with the whole WAL copied."""
        return self._checkpointer.rounds_done if self._checkpointer is not None else 0

    def _set_sync(self, full: bool) -> None:
        if full != self._synchronous_full:
            self._conn.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._synchronous_full = full

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        started = time.perf_counter()
        self._conn.execute("COMMIT")  # in WAL mode the pages are written and fsynced here
        self._commit_seconds = time.perf_counter() - started

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageError(
                f"{self.path}: an earlier write failed ({self._failed}); restart the member"
            )

    @contextmanager
    def _poison_on_error(self) -> Iterator[None]:
        try:
            yield
        except StorageError as exc:
            self._failed = exc
            if self._checkpointer is not None:
                self._checkpointer.stop()  # the file's state is unknown: leave it be
            raise

    @contextmanager
    def _sqlite_errors(self, opening: bool = False) -> Iterator[None]:
        # At open our fixed statements only meet a plain SQLITE_ERROR when the file is
        # damaged ("unsupported file format", a schema that lost a column).
        corrupt = {_SQLITE_CORRUPT, _SQLITE_NOTADB} | ({_SQLITE_ERROR} if opening else set())
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in corrupt:
                raise CorruptionError(self.path, f"SQLite reports: {exc}") from exc
            raise StorageError(f"{self.path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            # sqlite3 fails to decode an error message quoting damaged schema text; the
            # schema and data hold no other text.
            text = bytes(exc.object).decode(errors="replace")
            raise CorruptionError(self.path, f"SQLite reports: {text}") from exc
