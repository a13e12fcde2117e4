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
* Memoisation: a prefix (set of linearized ops, model state) that was refuted once is
  never explored again, since what can follow depends only on that pair.

Real-time order: op A precedes op B only if ``A.ret < B.call``. When a return and a
call have the same timestamp the call is ordered first, so the two ops count as
concurrent. This is the conservative choice: the checker never rejects a history
because of a tie in a coarse clock (e.g. virtual ticks).

Timed-out ops (``ret is None``) may have taken effect at any moment after their call,
or never. They have no return event (return time +infinity), their output is not
checked, and a key is done as soon as every completed op is linearized: the timed-out
ops left over can always go last.

Pruning rules, each of which keeps at least one linearization if there is any:

* Read-only steps are forced. A completed get or failed cas that fits the current state
  is linearized without branching: in any linearization extending the prefix it can be
  moved to the front (all ops that must precede it are in the prefix already, and it
  changes nothing), so if the prefix plus it cannot be extended, neither can the prefix.
* Inert timed-out writes are skipped. A timed-out get has no effect. A timed-out write
  is never linearized where it would change nothing, nor when no op still to be
  linearized observes its value (as a get or failed-cas output or a cas ``expect``):
  removing it from a linearization only changes states that nobody observes, and any
  timed-out op that then behaves differently can move to the end. For the same reason
  all states that nobody still observes are one state for memoisation.
* Identical timed-out writes are interchangeable once both have been called, so only
  the earliest-called unused one is tried.
* Fewer timed-out ops used is never worse: a prefix that differs from a refuted one only
  by using more timed-out ops is refuted too.

Cost: fine for the simulator's histories (thousands of ops over tens of keys check in
milliseconds). A key whose writes reuse a few values, with many timed-out writes
pending, can make a refutation exponential; ``budget_s`` bounds that and the result is
then reported as unknown (``timed_out``). Unique written values avoid it.
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
# Stands for "no value": what a put observes, and a state no remaining op observes.
_NOTHING = object()
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


def _observed(op: _Op) -> object:
    """The value the key must hold for op to be linearized (_NOTHING if any will do): a
    get's output, a successful or timed-out cas's expected value, a failed cas's
    reported one."""
    if op.kind == _PUT or (op.timed_out and op.kind == _GET):
        return _NOTHING
    if op.kind == _CAS and (op.timed_out or op.cas_ok):
        return op.expect
    return op.out


def _check_key(key: str, raw: list[Operation], deadline: float) -> _KeyResult:
    ops = [_normalise(o) for o in raw]
    written = {o.value for o in ops if o.kind != _GET}
    for op in ops:
        why = _impossible(op, written)
        if why is not None:
            return _KeyResult(False, explanation=f"{_fmt(op.src)}: {why}")

    # A timed-out get has no effect, and a timed-out write whose value no op observes is
    # inert (see the module docstring): drop both.
    seen = {_observed(o) for o in ops}
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
    observes = [_observed(o) for o in ops]
    # Completed gets and failed cas never change the state.
    read_only = [not o.timed_out and o.kind != _PUT and not o.cas_ok for o in ops]
    bits = [1 << j for j in range(n)]
    # How many ops not linearized yet observe each value. A state nobody left observes is
    # as good as any other such state, and a timed-out write of such a value is inert
    # from here on (the argument for dropping unobserved writes, applied to the suffix).
    watchers: dict[object, int] = {}
    for v in observes:
        watchers[v] = watchers.get(v, 0) + 1
    # Timed-out writes with the same effect are interchangeable once both are called, so
    # only the earliest-called unused one is ever tried: twin[j] is the previous one.
    twin = [-1] * n
    last: dict[tuple[int, object, str | None], int] = {}
    for _, phase, j in events:
        if phase == 0 and timed[j]:
            effect = (kind[j], observes[j], value[j])
            twin[j] = last.get(effect, -1)
            last[effect] = j

    state: str | None = None  # a key starts absent
    done = 0  # bitmask of the linearized completed ops
    used = 0  # bitmask of the linearized timed-out ops
    # Per linearized op: (call node, state before it, forced read-only step?, memo key).
    stack: list[tuple[int, str | None, bool, tuple[int, object]]] = []
    # Memo of refuted prefixes: (done, state or _NOTHING if nobody left observes it) ->
    # the `used` masks seen. A prefix that used a superset of the timed-out ops of a
    # refuted one is refuted too: timed-out ops are optional, so fewer used is never worse.
    refuted: dict[tuple[int, object], list[int]] = {}
    # Deepest point reached, kept for the failure explanation.
    best_len = -1
    best_prefix: list[int] = []
    best_state: str | None = None
    best_stuck: list[int] = []
    best_blocker = -1

    node = 0
    fresh = True  # a new prefix was just linearized
    steps = 0
    while remaining:
        steps += 1
        if steps % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
            return _KeyResult(
                False,
                timed_out=True,
                explanation=f"search budget ran out on key {key!r} ({n} ops, "
                f"{len(stack)} linearized, {steps} steps): result unknown",
            )
        forced = False
        if fresh:
            # A read-only op (completed get or failed cas) that fits the current state is
            # linearized right away without branching: in any linearization extending
            # this prefix it can be moved to the front, since every op that must precede
            # it is already in the prefix and it changes no state. So if this prefix plus
            # it cannot be extended, neither can this prefix.
            fresh = False
            node = nxt[0]
            while is_call[node]:
                j = node_op[node]
                if (
                    read_only[j]
                    and state == observes[j]
                    and (kind[j] == _GET or state != expect[j])
                ):
                    forced = True
                    break
                node = nxt[node]
            else:
                node = nxt[0]

        j = -1
        new = state
        if forced:
            j = node_op[node]
        elif is_call[node]:
            j = node_op[node]
            new = value[j]
            t = twin[j]
            if (
                read_only[j]  # none fits the state, or the forced step would have taken it
                or (t >= 0 and not used & bits[t])
                # A timed-out write that changes nothing, or that nobody left can see,
                # could go last instead.
                or (timed[j] and (new == state or not watchers.get(new)))
                or (kind[j] == _CAS and state != observes[j])
            ):
                node = nxt[node]
                continue

        if j >= 0:
            # Extend the prefix with op j, unless the result is known to be refuted.
            if timed[j]:
                next_done, next_used = done, used | bits[j]
            else:
                next_done, next_used = done | bits[j], used
            still_seen = watchers.get(new, 0) > (observes[j] == new)  # j stops watching
            memo_key = (next_done, new if still_seen else _NOTHING)
            seen_used = refuted.get(memo_key)
            if seen_used is None or not any(u | next_used == next_used for u in seen_used):
                stack.append((node, state, forced, memo_key))
                state, done, used = new, next_done, next_used
                if not timed[j]:
                    remaining -= 1
                watchers[observes[j]] -= 1
                _lift(nxt, prv, node, ret_node[j])
                fresh = True
                continue
            if not forced:
                node = nxt[node]
                continue
            node = 0  # the forced step leads to a refuted prefix, so this one is too

        # Dead end: a return event (its op had to be linearized by now) or a refuted
        # prefix. Undo the latest choice; undoing a forced step refutes its prefix too.
        if node and len(stack) > best_len:
            best_len = len(stack)
            best_prefix = [node_op[c] for c, _, _, _ in stack]
            best_state = state
            best_stuck = []
            c = nxt[0]
            while c != node:
                best_stuck.append(node_op[c])
                c = nxt[c]
            best_blocker = node_op[node]
        forced = True
        while forced and stack:
            node, state, forced, memo_key = stack.pop()
            refuted.setdefault(memo_key, []).append(used)
            j = node_op[node]
            if timed[j]:
                used ^= bits[j]
            else:
                done ^= bits[j]
                remaining += 1
            watchers[observes[j]] += 1
            _unlift(nxt, prv, node, ret_node[j])
        if forced:
            break
        node = nxt[node]

    if not remaining:
        return _KeyResult(True)
    return _KeyResult(
        False,
        explanation=_explain(ops, raw, best_prefix, best_state, best_stuck, best_blocker, steps),
    )


def _lift(nxt: list[int], prv: list[int], call: int, ret: int) -> None:
    """Unlink an op's call event and its return event (0 if none) from the list."""
    nxt[prv[call]] = nxt[call]
    if nxt[call] != -1:
        prv[nxt[call]] = prv[call]
    if ret:
        nxt[prv[ret]] = nxt[ret]
        if nxt[ret] != -1:
            prv[nxt[ret]] = prv[ret]


def _unlift(nxt: list[int], prv: list[int], call: int, ret: int) -> None:
    """Undo _lift; undoing in reverse order of lifting restores the list (dancing links)."""
    if ret:
        nxt[prv[ret]] = ret
        if nxt[ret] != -1:
            prv[nxt[ret]] = ret
    nxt[prv[call]] = call
    if nxt[call] != -1:
        prv[nxt[call]] = call


def _explain(
    ops: list[_Op],
    raw: list[Operation],
    prefix: list[int],
    state: str | None,
    stuck: list[int],
    blocker: int,
    steps: int,
) -> str:
    completed = sum(not o.timed_out for o in ops)
    shown = [ops[j].src for j in prefix[-_PREFIX_TAIL:]]
    more = f"... {len(prefix) - len(shown)} earlier, then " if len(prefix) > len(shown) else ""
    parts = [
        f"no linearization of {len(raw)} ops ({completed} completed) exists; {steps} search steps.",
        f"Longest linearizable prefix ({len(prefix)} ops, leaving the key at {state!r}): "
        f"{more}{_fmt_list(shown)}.",
    ]
    if blocker >= 0:
        parts.append(
            f"Then nothing fits: {_fmt(ops[blocker].src)} must be linearized before the ops "
            f"called after it returned, and no candidate "
            f"({_fmt_list(ops[j].src for j in stuck)}) can be linearized next."
        )
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
