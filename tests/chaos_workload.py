"""The moving parts of the chaos test (tests/test_chaos.py): a kv workload of concurrent
Callers that records every operation for the linearizability checker, and a seeded
fault injector that kills, pauses, partitions and restarts members of a LocalCluster.

Every time here comes from one clock, `time.monotonic()` in the test process, counted
from the start of the run (`Run.t0`), so operations and faults line up."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

from tinyraft.caller import Caller, CommandError, RetryPolicy, TinyraftError
from tinyraft.local import LocalCluster
from tinyraft.sim.linearizability import Operation

ATTEMPT_TIMEOUT_S = 1.0  # one gRPC attempt
CALL_DEADLINE_S = 4.0  # all attempts of one call together (the Caller's retry deadline)
THINK_S = 0.01  # a client waits up to this long between two operations


@dataclass
class Run:
    """What one chaos run produced: the history, the faults, and a tally of outcomes."""

    seed: int
    t0: float = field(default_factory=time.monotonic)
    wall0: float = field(default_factory=time.time)
    history: list[Operation] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)  # processes that exited on their own
    reported: set[int] = field(default_factory=set)  # pids already in crashes

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, what: str) -> None:
        """Log a fault event with the test clock and the wall clock of the member logs."""
        t = self.now()
        wall = time.strftime("%H:%M:%S", time.localtime(self.wall0 + t))
        millis = int((self.wall0 + t) % 1 * 1000)
        self.faults.append(f"t={t:7.2f}s ({wall},{millis:03d}) {what}")


# -- the workload ------------------------------------------------------------------------


def _command(op: str, key: str, value: str | None = None, expect: str | None = None) -> bytes:
    if op == "put":
        cmd: dict[str, object] = {"op": "put", "key": key, "value": value}
    elif op == "cas":
        cmd = {"op": "cas", "key": key, "expect": expect, "value": value}
    else:
        cmd = {"op": "get", "key": key}
    return json.dumps(cmd).encode()


async def client(run: Run, index: int, targets: list[str], keys: list[str], stop_at: float) -> None:
    """One client, one operation at a time, until the run's clock passes stop_at.

    Writes carry values unique to the run (client index and counter), so the checker
    can tell every write apart. A write that fails is recorded with an unknown outcome
    (it may have been applied); a read that fails is dropped (it changed nothing)."""
    rng = random.Random(f"{run.seed}/client{index}")
    seen: dict[str, str | None] = {}  # the latest value this client observed, per key
    retry = RetryPolicy(max_attempts=100, deadline=CALL_DEADLINE_S)
    async with Caller(targets, timeout=ATTEMPT_TIMEOUT_S, retry=retry) as caller:
        n = 0
        while run.now() < stop_at:
            n += 1
            key = rng.choice(keys)
            value = f"c{index}.{n}"
            roll = rng.random()
            if roll < 0.35:
                op, expect = "put", None
            elif roll < 0.6:
                op = "cas"
                # Mostly expect what we saw last (likely to succeed under low contention),
                # sometimes absent or a stale guess, so that cas also fails.
                expect = seen.get(key) if rng.random() < 0.8 else rng.choice([None, "c0.1"])
            else:
                op, expect = "get", None
            lease = op == "get" and rng.random() < 0.25
            call = run.now()
            try:
                if op == "get":
                    request = _command("get", key)
                    consistency = "lease" if lease else "linearizable"
                    raw = await asyncio.wait_for(
                        caller.query(request, consistency), CALL_DEADLINE_S + 2
                    )
                else:
                    raw = await asyncio.wait_for(
                        caller.apply(_command(op, key, value, expect)), CALL_DEADLINE_S + 2
                    )
            except (TinyraftError, TimeoutError) as err:
                kind = type(err).__name__
                if isinstance(err, CommandError):
                    kind += f"({err.error})"
                run.outcomes[f"{op} failed: {kind}"] += 1
                if op != "get":
                    record = Operation(index, call, None, op, key, value, expect)
                    run.history.append(record)
                continue
            ret = run.now()
            answer = json.loads(raw)
            if op == "get":
                output: object = answer["value"]
                run.outcomes["get (lease) ok" if lease else "get ok"] += 1
                seen[key] = answer["value"]
                run.history.append(Operation(index, call, ret, op, key, output=output))
            elif op == "put":
                assert answer == {"ok": True}, f"put answered {answer!r}"
                run.outcomes["put ok"] += 1
                seen[key] = value
                run.history.append(Operation(index, call, ret, op, key, value))
            else:
                output = (answer["ok"], answer["value"])
                run.outcomes["cas ok" if answer["ok"] else "cas refused"] += 1
                seen[key] = answer["value"]
                run.history.append(Operation(index, call, ret, op, key, value, expect, output))
            await asyncio.sleep(rng.uniform(0, THINK_S))


async def final_reads(
    run: Run, cluster: LocalCluster, keys: list[str]
) -> dict[str, dict[str, str | None]]:
    """Read every key linearizably through every member, adding the reads to the
    history; then read every key "stale" from every member, which each answers from its
    own Module, and return those answers by member. Failing here fails the test: the
    cluster is healed and quiet, so it must serve."""
    retry = RetryPolicy(max_attempts=1000, deadline=30.0)
    held: dict[str, dict[str, str | None]] = {}
    for consistency in ("linearizable", "stale"):
        for member_id in sorted(cluster.members):
            address = cluster.members[member_id].address
            async with Caller([address], timeout=5.0, retry=retry) as caller:
                for key in keys:
                    call = run.now()
                    raw = await caller.query(_command("get", key), consistency)
                    value = json.loads(raw)["value"]
                    if consistency == "linearizable":
                        op = Operation(-1, call, run.now(), "get", key, output=value)
                        run.history.append(op)
                    else:
                        held.setdefault(member_id, {})[key] = value
    return held


# -- the fault injector ------------------------------------------------------------------


async def _leader(cluster: LocalCluster) -> str | None:
    return await asyncio.to_thread(cluster.leader)


async def inject_faults(run: Run, cluster: LocalCluster, stop_at: float) -> None:
    """Until stop_at, repeatedly: a quiet spell, then one fault, held for a while, then
    undone. Choices come from the seeded RNG; which member leads is up to the cluster."""
    ids = sorted(cluster.members)
    rng = random.Random(f"{run.seed}/{len(ids)}/faults")
    kinds = ["kill", "pause", "isolate", "isolate-leader", "module"]
    deck: list[str] = []  # every kind once per round, in a random order
    while run.now() < stop_at:
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        check_processes(run, cluster)
        if run.now() >= stop_at:
            break
        if not deck:
            deck = rng.sample(kinds, len(kinds))
        kind = deck.pop()
        # Half of the kills, pauses and Module kills aim at the leader: that hurts most.
        aim_at_leader = kind == "isolate-leader" or (
            kind in ("kill", "pause", "module") and rng.random() < 0.5
        )
        fallback = rng.choice(ids)
        target = (await _leader(cluster) or fallback) if aim_at_leader else fallback
        role = "leader" if aim_at_leader else "random member"
        if kind == "kill":
            down = rng.uniform(0.2, 2.0)
            run.note(f"SIGKILL sidecar {target} ({role}), down for {down:.2f}s")
            await asyncio.to_thread(cluster.kill, target)
            try:
                await asyncio.sleep(down)
            finally:
                run.note(f"restart sidecar {target}")
                await asyncio.to_thread(cluster.restart, target)
        elif kind == "pause":
            held = rng.uniform(0.3, 3.0)
            # Sometimes the paused leader's network also lags when it resumes (as after
            # a long GC pause): it must not trust its old lease then.
            lag = rng.uniform(0.3, 1.0) if aim_at_leader and rng.random() < 0.5 else 0.0
            cut = f", cut off until {lag:.2f}s after it resumes" if lag else ""
            run.note(f"SIGSTOP sidecar {target} ({role}) for {held:.2f}s{cut}")
            cluster.signal(target, signal.SIGSTOP)
            try:
                if lag:
                    cluster.partition([target])
                await asyncio.sleep(held)
                run.note(f"SIGCONT sidecar {target}")
                cluster.signal(target, signal.SIGCONT)
                await asyncio.sleep(lag)
            finally:
                cluster.signal(target, signal.SIGCONT)
                if lag:
                    run.note("heal")
                    cluster.heal()
        elif kind in ("isolate", "isolate-leader"):
            held = rng.uniform(0.5, 3.0)
            side = [target]
            if kind == "isolate-leader" and len(ids) >= 5 and rng.random() < 0.5:
                # A minority with the leader in it: it keeps a follower but no quorum.
                side.append(rng.choice([m for m in ids if m != target]))
            run.note(f"partition {side} ({role}) from the rest for {held:.2f}s")
            cluster.partition(side)
            try:
                await asyncio.sleep(held)
            finally:
                run.note("heal")
                cluster.heal()
        else:
            down = rng.uniform(0.1, 1.5)
            run.note(f"SIGKILL Module of {target} ({role}), down for {down:.2f}s")
            await asyncio.to_thread(cluster.signal, target, signal.SIGKILL, True)
            try:
                await asyncio.sleep(down)
            finally:
                run.note(f"restart Module of {target}")
                await asyncio.to_thread(cluster.start_module, target)


def check_processes(run: Run, cluster: LocalCluster) -> None:
    """Note every sidecar or Module that exited although no fault was holding it down
    (every fault is undone before the next, so any exit seen here is the process's own)."""
    for member_id, m in cluster.members.items():
        for what, proc in (("sidecar", m.sidecar), ("Module", m.module)):
            code = None if proc is None else proc.poll()
            if proc is not None and code is not None and proc.pid not in run.reported:
                run.reported.add(proc.pid)
                run.crashes.append(f"{what} {member_id} exited by itself with code {code}")
                run.note(f"{what} {member_id} found exited by itself (code {code})")


def repair(run: Run, cluster: LocalCluster) -> None:
    """Undo every fault: heal, resume, and start whatever is down (Module first)."""
    check_processes(run, cluster)
    cluster.heal()
    for member_id, m in cluster.members.items():
        if m.sidecar is not None and m.sidecar.poll() is None:
            cluster.signal(member_id, signal.SIGCONT)
        if m.module is None or m.module.poll() is not None:
            run.note(f"repair: start Module of {member_id}")
            cluster.start_module(member_id)
        if m.sidecar is None or m.sidecar.poll() is not None:
            run.note(f"repair: start sidecar {member_id}")
            cluster.restart(member_id)


# -- reporting ---------------------------------------------------------------------------


def describe(o: Operation) -> str:
    if o.op == "put":
        what = f"put {o.key}={o.value}"
    elif o.op == "cas":
        what = f"cas {o.key} {o.expect}->{o.value}"
    else:
        what = f"get {o.key}"
    if o.ret is None:
        return f"[{o.call:7.3f}, unknown] c{o.client} {what} -> ?"
    if o.op == "put":
        out = "ok"
    elif o.op == "cas":
        ok, current = o.output  # type: ignore[misc]
        out = f"{'ok' if ok else 'refused'} (now {current})"
    else:
        out = repr(o.output)
    who = "final" if o.client < 0 else f"c{o.client}"
    return f"[{o.call:7.3f}, {o.ret:7.3f}] {who} {what} -> {out}"


def history_tail(history: list[Operation], key: str | None, count: int = 40) -> str:
    ops = sorted((o for o in history if key is None or o.key == key), key=lambda o: o.call)
    lines = [describe(o) for o in ops[-count:]]
    skipped = len(ops) - len(lines)
    head = f"... {skipped} earlier ops\n" if skipped > 0 else ""
    return head + "\n".join(lines)
