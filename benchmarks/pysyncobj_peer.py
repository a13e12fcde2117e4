"""PySyncObj, the other Python Raft, measured the way its own benchmark does: three
members on loopback, commands issued inside the leader process (no client hop), its
journal file on and its batching on. Prints one JSON line.

    python benchmarks/pysyncobj_peer.py --seconds 10 --size 128

Note for the comparison: PySyncObj's journal is an mmap'd file that it never fsyncs
while running, so its numbers do not pay for durability; tinyraft's do."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _member(
    me: str, partners: list[str], journal: str, seconds: float, size: int, out: mp.Queue
) -> None:
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Store(SyncObj):
        def __init__(self) -> None:
            conf = SyncObjConf(
                journalFile=journal,
                appendEntriesUseBatch=True,
                commandsQueueSize=200_000,
                dynamicMembershipChange=False,
            )
            super().__init__(me, partners, conf)
            self.data: dict[str, bytes] = {}

        @replicated
        def put(self, key: str, value: bytes) -> bool:
            self.data[key] = value
            return True

    node = Store()
    deadline = time.monotonic() + 30
    while node._getLeader() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if node._getLeader() is None or node._getLeader().address != me:
        # Followers just serve until the leader's process is done.
        time.sleep(seconds + 15)
        return
    value = b"x" * size
    committed = 0
    in_flight = 0

    def done(result: object, error: int) -> None:
        nonlocal committed, in_flight
        in_flight -= 1
        if error == 0:
            committed += 1

    warm_end = time.monotonic() + 1.0
    while time.monotonic() < warm_end:
        while in_flight < 5000:
            in_flight += 1
            node.put(f"k{in_flight % 1000}", value, callback=done)
        time.sleep(0.001)
    start_count, start = committed, time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        while in_flight < 5000:
            in_flight += 1
            node.put(f"k{in_flight % 1000}", value, callback=done)
        time.sleep(0.0005)
    elapsed = time.monotonic() - start
    out.put({"commits_per_s": round((committed - start_count) / elapsed, 1)})
    node.destroy()


def run(seconds: float, size: int) -> dict[str, object]:
    addrs = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
    out: mp.Queue = mp.Queue()
    with tempfile.TemporaryDirectory(prefix="pysyncobj-") as tmp:
        procs = [
            mp.Process(
                target=_member,
                args=(
                    a,
                    [p for p in addrs if p != a],
                    os.path.join(tmp, f"j{i}"),
                    seconds,
                    size,
                    out,
                ),
                daemon=True,
            )
            for i, a in enumerate(addrs)
        ]
        for p in procs:
            p.start()
        result = out.get(timeout=seconds + 60)
        for p in procs:
            p.terminate()
            p.join(10)
    return {"peer": "pysyncobj", "members": 3, "size_bytes": size, "seconds": seconds,
            "journal": True, "durable": False, **result}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.size)))


if __name__ == "__main__":
    main()
