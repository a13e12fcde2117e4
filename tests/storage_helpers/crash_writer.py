"""Writer processes for tests/test_storage_crash.py.

Run as a fork server: it imports once, then for each line "<data dir> <seed>" read
from stdin forks a writer child, which opens the data dir, reports what it recovered
and runs a random workload. On the next line ("kill") the server kills the child
with SIGKILL, reaps it and writes "X", so every line the child wrote comes before
it. (Forking saves an interpreter start and the imports per kill; the child is a
real process with its own file descriptors, locks and SQLite connection.)

stdout protocol, one line each, flushed:
  S <json>            the recovered state: {"hs": [term, vote, commit],
                      "snap": [index, term] | null, "runs": [[first, last, term], ...]}
  I A first last term commit vote   intent: save these entries (term `term`) and hard state
  I C index term                    intent: take a snapshot at index, then compact
  I H term vote commit              intent: save a hard state alone
  K                                 the last intent's call returned (it is durable)
  X                                 the child is gone

Entry contents are a function of (index, term), so the writer checks every recovered
entry and snapshot byte for byte; a mismatch exits with an error.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import traceback

from tinyraft.core.types import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from tinyraft.storage import DataDir, checkpointer

checkpointer.TRIGGER_BYTES = 2048  # checkpoint all the time, so kills land inside them too

MEMBERS = ("m1", "m2", "m3")
CONFIG = Configuration(frozenset(MEMBERS))


def entry(index: int, term: int) -> Entry:
    return Entry(index, term, EntryKind(index % 3), b"%d:%d;" % (index, term) * (1 + index % 7))


def snapshot_bytes(index: int, term: int) -> bytes:
    return b"snap %d %d\n" % (index, term) * (1 + index % 3000)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def serve() -> None:
    while line := sys.stdin.readline():
        data_dir, seed = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                write(data_dir, int(seed))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)
        sys.stdin.readline()  # "kill"; the child stays unreaped until then, so the pid
        os.kill(pid, signal.SIGKILL)  # cannot have been reused by another process
        os.waitpid(pid, 0)
        say("X")


def write(data_dir: str, seed: int) -> None:
    rng = random.Random(seed)
    dd, rec = DataDir.open(data_dir, "crash-cluster", "m1")
    log = dd.log
    hs = rec.hard_state
    snap = rec.snapshot.meta if rec.snapshot else SnapshotMeta()
    terms = {e.index: e.term for e in rec.entries}
    for e in rec.entries:
        if e != entry(e.index, e.term):
            raise SystemExit(f"entry {e.index} has wrong contents: {e!r}")
    if rec.snapshot:
        with dd.snapshots.reader(rec.snapshot, chunk_size=4096) as chunks:
            if b"".join(chunks) != snapshot_bytes(snap.index, snap.term):
                raise SystemExit(f"snapshot {snap} has wrong contents")
    runs: list[list[int]] = []
    for e in rec.entries:
        if runs and runs[-1][2] == e.term:
            runs[-1][1] = e.index
        else:
            runs.append([e.index, e.index, e.term])
    state = {
        "hs": [hs.term, hs.vote, hs.commit],
        "snap": [snap.index, snap.term] if rec.snapshot else None,
        "runs": runs,
    }
    say("S " + json.dumps(state))
    last = max(terms, default=snap.index)

    while True:
        op = rng.random()
        if op < 0.15 and last > hs.commit:  # a new leader overwrites an uncommitted suffix
            first = rng.randint(hs.commit + 1, last)
            count = rng.randint(1, 20)
            hs = HardState(hs.term + 1, rng.choice(MEMBERS), hs.commit)
        elif op < 0.25 and hs.commit > snap.index:
            index = rng.randint(snap.index + 1, hs.commit)
            snap = SnapshotMeta(index, terms[index], CONFIG)
            say(f"I C {snap.index} {snap.term}")
            data = snapshot_bytes(snap.index, snap.term)
            with dd.snapshots.writer() as writer:
                for at in range(0, len(data), 10_000):
                    writer.write(data[at : at + 10_000])
                writer.commit(snap)
            log.compact(snap)
            terms = {i: t for i, t in terms.items() if i > snap.index}
            say("K")
            continue
        elif op < 0.35:
            hs = HardState(hs.term + 1, rng.choice(MEMBERS), hs.commit)
            say(f"I H {hs.term} {hs.vote} {hs.commit}")
            log.save(hs, [])
            say("K")
            continue
        else:
            first = last + 1
            count = rng.randint(1, 64)
        new_last = first + count - 1
        hs = HardState(hs.term, hs.vote, rng.randint(hs.commit, max(hs.commit, first - 1)))
        batch = [entry(i, hs.term) for i in range(first, new_last + 1)]
        say(f"I A {first} {new_last} {hs.term} {hs.commit} {hs.vote}")
        log.save(hs, batch)
        terms = {i: t for i, t in terms.items() if i < first}
        terms.update((i, hs.term) for i in range(first, new_last + 1))
        last = new_last
        say("K")


if __name__ == "__main__":
    serve()
