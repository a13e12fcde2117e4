"""Linearizability checker for a single-key key-value model (put / get / cas).

The search is the Wing-Gong algorithm with Lowe's memoisation (the approach the Go
library porcupine takes), written from scratch:

* The history is split by key and each key is checked on its own (linearizability is
  compositional, so the whole history is linearizable iff every key's history is).
* A key's call and return events are put in a doubly linked list, sorted by time. The
  ops whose calls come before the first remaining return are the candidates to be
  linearized next. Linearizing one lifts its two events out of the list; reaching a
  return event means its op should already have been linearized, so we backtrack. An
  explicit stack replaces recursion because a key may have thousands of ops.
* Memoisation: a (set of linearized ops, model state) pair seen once is never explored
  again, since what can follow depends only on that pair.

Real-time order: op A precedes op B only if ``A.ret < B.call``. When a return and a
call have the same timestamp the call is ordered first, so the two ops count as
concurrent. This is the conservative choice: a checker never rejects a history because
of a tie in a coarse clock (e.g. virtual ticks).

Timed-out ops (``ret is None``) may have taken effect at any moment after their call,
or never. They have no return event (return time +infinity) and their output is not
checked. A key is done as soon as every completed op is linearized, because the
timed-out ops left over can always go last. Three reductions keep them cheap, each
one sound:

* a timed-out get has no effect, so it is dropped;
* a timed-out write is never linearized where it would change nothing (it could just
  as well go last), which stops the search from trying it at every step;
* a timed-out write whose new value no other op of the key ever sees (no get or cas
  output and no cas ``expect`` holds it) is dropped: removing it from a linearization
  only changes states nobody observed, and any timed-out op that would then behave
  differently can move to the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["CheckResult", "Operation", "check_kv"]

_PUT, _GET, _CAS = 0, 1, 2
_KINDS = {"put": _PUT, "get": _GET, "cas": _CAS}

# How many search steps to run between two reads of the clock.
_CLOCK_EVERY = 1024
# Above this many ops a failure explanation lists only the ops around the failure.
_LIST_ALL_OPS = 30
# How many ops of the longest linearizable prefix a failure explanation shows.
_PREFIX_TAIL = 8


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key, as observed by the client."""

    client: int
    call: float  # invocation time (any monotone clock: virtual ticks or seconds)
    ret: float | None  # completion time; None = timed out, outcome unknown
    op: str  # "put" | "get" | "cas"
    key: str
    value: str | None = None  # put's value / cas's new value
    expect: str | None = None  # cas's expected value (None = key absent)
    output: object = None  # get: str|None; cas: (ok, current); put: None. Unused if ret is None.


@dataclass
class CheckResult:
    ok: bool
    key: str | None  # the first key whose history is not linearizable (or timed out)
    explanation: str
    timed_out: bool  # the search budget ran out: the result is unknown, not a proof


@dataclass(slots=True)
class _Op:
    """An Operation normalised for the search."""

    src: Operation
    kind: int
    timed_out: bool
    value: str | None
    expect: str | None
    out: str | None  # get's output, or cas's reported current value
    cas_ok: bool


def _fmt_output(o: Operation) -> str:
    if o.ret is None:
        return "?"
    if o.op == "put":
        return "ok"
    if o.op == "cas" and isinstance(o.output, Sequence) and len(o.output) == 2:
        return f"({o.output[0]}, {o.output[1]!r})"
    return repr(o.output)


def _fmt(o: Operation) -> str:
    if o.op == "put":
        what = f"put({o.value!r})"
    elif o.op == "get":
        what = "get()"
    else:
        what = f"cas({o.expect!r} -> {o.value!r})"
    ret = "timed out" if o.ret is None else f"{o.ret:g}"
    return f"c{o.client} {what} -> {_fmt_output(o)} [{o.call:g}, {ret}]"


def _fmt_list(ops: Iterable[Operation]) -> str:
    return "; ".join(_fmt(o) for o in ops) or "(none)"


def _normalise(o: Operation) -> _Op:
    kind = _KINDS.get(o.op)
    if kind is None:
        raise ValueError(f"unknown op {o.op!r} in {o!r}")
    if o.ret is not None and o.ret < o.call:
        raise ValueError(f"operation returns before it is called: {o!r}")
    timed_out = o.ret is None
    out: str | None = None
    cas_ok = False
    if not timed_out and kind == _GET:
        out = _value(o.output, o)
    elif not timed_out and kind == _CAS:
        if not (isinstance(o.output, Sequence) and len(o.output) == 2):
            raise ValueError(f"cas output must be (ok, current): {o!r}")
        cas_ok, out = bool(o.output[0]), _value(o.output[1], o)
    return _Op(o, kind, timed_out, o.value, o.expect, out, cas_ok)


def _value(v: object, o: Operation) -> str | None:
    # A bytes-vs-str mix-up would otherwise surface as a baffling "never written" failure.
    if v is not None and not isinstance(v, str):
        raise ValueError(f"observed values must be str or None, got {v!r} in {o!r}")
    return v


def _impossible(op: _Op, written: set[str | None]) -> str | None:
    """Why a completed op can never be linearized anywhere, or None if it might be.

    Catching these up front gives a precise explanation and spares the search from
    proving the same thing exhaustively."""
    if op.timed_out or op.kind == _PUT:
        return None
    if op.kind == _GET:
        if op.out is not None and op.out not in written:
            return f"get returned {op.out!r}, which no operation ever wrote to this key"
        return None
    if op.cas_ok:
        if op.out != op.value:
            return f"successful cas reports current {op.out!r}, not its new value {op.value!r}"
        if op.expect is not None and op.expect not in written:
            return f"cas succeeded expecting {op.expect!r}, which was never written to this key"
        return None
    if op.out == op.expect:
        return f"cas failed although the current value {op.out!r} equals its expected value"
    if op.out is not None and op.out not in written:
        return f"failed cas reports current {op.out!r}, which was never written to this key"
    return None


@dataclass(slots=True)
class _KeyResult:
    ok: bool
    timed_out: bool = False
    explanation: str = ""


def _check_key(key: str, raw: list[Operation], deadline: float) -> _KeyResult:
    ops = [_normalise(o) for o in raw]
    written = {o.value for o in ops if o.kind != _GET}
    for op in ops:
        why = _impossible(op, written)
        if why is not None:
            return _KeyResult(False, explanation=f"{_fmt(op.src)}: {why}")

    # Values some op of this key observes; a timed-out write of any other value is inert.
    seen: set[str | None] = {o.expect for o in ops if o.kind == _CAS}
    seen.update(o.out for o in ops if not o.timed_out and o.kind != _PUT)
    ops = [o for o in ops if not o.timed_out or (o.kind != _GET and o.value in seen)]
    n = len(ops)
    remaining = sum(not o.timed_out for o in ops)  # completed ops not yet linearized
    if remaining == 0:
        return _KeyResult(True)

    # Events: (time, 0 = call / 1 = return, op). A call sorts before a return at the same
    # time, so such ops are concurrent (A precedes B only if A.ret < B.call).
    events: list[tuple[float, int, int]] = []
    for j, op in enumerate(ops):
        events.append((op.src.call, 0, j))
        if op.src.ret is not None:
            events.append((op.src.ret, 1, j))
    events.sort()

    # Linked list over nodes 1..len(events); node 0 is the head sentinel, -1 is the end.
    size = len(events) + 1
    nxt = [*range(1, size), -1]
    prv = list(range(-1, size - 1))
    node_op = [-1] * size
    is_call = [False] * size
    ret_node = [0] * n  # 0 = no return event (timed out)
    for node, (_, phase, j) in enumerate(events, start=1):
        node_op[node] = j
        is_call[node] = phase == 0
        if phase == 1:
            ret_node[j] = node

    kind = [o.kind for o in ops]
    timed = [o.timed_out for o in ops]
    value = [o.value for o in ops]
    expect = [o.expect for o in ops]
    out = [o.out for o in ops]
    cas_ok = [o.cas_ok for o in ops]
    bits = [1 << j for j in range(n)]

    state: str | None = None  # a key starts absent
    mask = 0  # bitmask of the linearized ops
    stack: list[tuple[int, str | None]] = []  # (call node, state before that op)
    memo: set[tuple[int, str | None]] = set()
    # Deepest point reached, kept for the failure explanation.
    best_len = -1
    best_prefix: list[int] = []
    best_state: str | None = None
    best_stuck: list[int] = []
    best_blocker = -1

    node = nxt[0]
    steps = 0
    while remaining:
        steps += 1
        if steps % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
            return _KeyResult(
                False,
                timed_out=True,
                explanation=f"search budget ran out on key {key!r} ({n} ops, "
                f"{len(memo)} states explored): result unknown",
            )
        if is_call[node]:
            j = node_op[node]
            k = kind[j]
            new = state
            if k == _PUT:
                new = value[j]
                # A timed-out write that changes nothing could go last instead.
                legal = not timed[j] or new != state
            elif k == _GET:
                legal = state == out[j]
            elif timed[j]:
                new = value[j]
                legal = state == expect[j] and new != state
            elif cas_ok[j]:
                new = value[j]
                legal = state == expect[j]
            else:
                legal = state != expect[j] and state == out[j]
            if legal:
                linearized = mask | bits[j]
                if (linearized, new) not in memo:
                    memo.add((linearized, new))
                    stack.append((node, state))
                    state, mask = new, linearized
                    if not timed[j]:
                        remaining -= 1
                    # Lift the op's events out of the list.
                    nxt[prv[node]], prv[nxt[node]] = nxt[node], prv[node]
                    r = ret_node[j]
                    if r:
                        nxt[prv[r]] = nxt[r]
                        if nxt[r] != -1:
                            prv[nxt[r]] = prv[r]
                    node = nxt[0]
                    continue
            node = nxt[node]
            continue

        # A return event: its op had to be linearized by now, so undo the latest choice.
        if len(stack) > best_len:
            best_len = len(stack)
            best_prefix = [node_op[c] for c, _ in stack]
            best_state = state
            best_stuck = []
            c = nxt[0]
            while c != node:
                best_stuck.append(node_op[c])
                c = nxt[c]
            best_blocker = node_op[node]
        if not stack:
            break
        node, state = stack.pop()
        j = node_op[node]
        mask ^= bits[j]
        if not timed[j]:
            remaining += 1
        # Put the events back in reverse order of removal (dancing links).
        r = ret_node[j]
        if r:
            nxt[prv[r]] = r
            if nxt[r] != -1:
                prv[nxt[r]] = r
        nxt[prv[node]] = node
        prv[nxt[node]] = node
        node = nxt[node]

    if not remaining:
        return _KeyResult(True)
    return _KeyResult(
        False,
        explanation=_explain(
            ops, raw, best_prefix, best_state, best_stuck, best_blocker, len(memo)
        ),
    )


def _explain(
    ops: list[_Op],
    raw: list[Operation],
    prefix: list[int],
    state: str | None,
    stuck: list[int],
    blocker: int,
    explored: int,
) -> str:
    completed = sum(not o.timed_out for o in ops)
    shown = [ops[j].src for j in prefix[-_PREFIX_TAIL:]]
    more = f"... {len(prefix) - len(shown)} earlier, then " if len(prefix) > len(shown) else ""
    parts = [
        f"no linearization of {len(raw)} ops ({completed} completed) exists; "
        f"{explored} states explored.",
        f"Longest linearizable prefix ({len(prefix)} ops, leaving the key at {state!r}): "
        f"{more}{_fmt_list(shown)}.",
        f"Then {_fmt(ops[blocker].src)} had to come next (its return precedes later calls)"
        f" but it, and every other candidate ({_fmt_list(ops[j].src for j in stuck)}), "
        "is inconsistent with that state.",
    ]
    if len(raw) <= _LIST_ALL_OPS:
        parts.append(f"All ops of the key: {_fmt_list(sorted(raw, key=lambda o: o.call))}.")
    return " ".join(parts)


def check_kv(history: Iterable[Operation], budget_s: float = 10.0) -> CheckResult:
    """Check that a put/get/cas history is linearizable, one key at a time.

    Keys are checked in order of first appearance; the first key that is not
    linearizable (or on which the time budget runs out) is reported. Raises ValueError
    on malformed operations (unknown op, ret < call, cas output not a pair)."""
    start = time.monotonic()
    deadline = start + budget_s
    by_key: dict[str, list[Operation]] = {}
    for o in history:
        by_key.setdefault(o.key, []).append(o)
    for key, ops in by_key.items():
        res = _check_key(key, ops, deadline)
        if not res.ok:
            where = "search budget ran out" if res.timed_out else "not linearizable"
            return CheckResult(False, key, f"key {key!r} {where}: {res.explanation}", res.timed_out)
    total = sum(len(ops) for ops in by_key.values())
    return CheckResult(
        True,
        None,
        f"linearizable: {total} ops over {len(by_key)} keys checked in "
        f"{time.monotonic() - start:.3f}s",
        False,
    )
