"""Tests for the put/get/cas linearizability checker."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tinyraft.sim.linearizability import CheckResult, Operation, check_kv


def put(key: str, value: str | None, call: float, ret: float | None, client: int = 0) -> Operation:
    return Operation(client, call, ret, "put", key, value=value)


def get(key: str, output: str | None, call: float, ret: float | None, client: int = 0) -> Operation:
    return Operation(client, call, ret, "get", key, output=output)


def cas(
    key: str,
    expect: str | None,
    value: str | None,
    output: tuple[bool, str | None] | None,
    call: float,
    ret: float | None,
    client: int = 0,
) -> Operation:
    return Operation(client, call, ret, "cas", key, value=value, expect=expect, output=output)


def assert_linearizable(history: list[Operation]) -> None:
    res = check_kv(history)
    assert res.ok, res.explanation
    assert not res.timed_out
    assert res.key is None


def assert_not_linearizable(history: list[Operation], key: str = "a") -> CheckResult:
    res = check_kv(history)
    assert not res.ok, res.explanation
    assert not res.timed_out, res.explanation
    assert res.key == key
    return res


# --- histories that must be rejected ---------------------------------------------------

NOT_LINEARIZABLE = {
    "stale read of absent": [put("a", "1", 0, 1), get("a", None, 2, 3)],
    "stale read of old value": [
        put("a", "1", 0, 1),
        put("a", "2", 2, 3),
        get("a", "1", 4, 5),
    ],
    # The acknowledged put of 1 is lost: a later cas still finds the key absent.
    "lost write seen by cas": [
        put("a", "1", 0, 1),
        cas("a", None, "2", (True, "2"), 2, 3),
    ],
    "lost write seen by failed cas": [
        put("a", "1", 0, 1),
        cas("a", "x", "2", (False, None), 2, 3),
    ],
    "cas succeeds twice on the same expected value": [
        put("a", "0", 0, 1),
        cas("a", "0", "1", (True, "1"), 2, 5, client=1),
        cas("a", "0", "2", (True, "2"), 3, 6, client=2),
    ],
    "read of a value never written": [put("a", "1", 0, 1), get("a", "zzz", 2, 3)],
    "sequential reads go backwards": [
        put("a", "1", 0, 1),
        put("a", "2", 2, 3),
        get("a", "2", 4, 5),
        get("a", "1", 6, 7),
    ],
    # Each get alone could be explained (put 2 is still in flight), but once a read has
    # seen 2 a later read cannot see 1 again.
    "reads go backwards during a slow put": [
        put("a", "1", 0, 1),
        put("a", "2", 2, 10, client=1),
        get("a", "2", 3, 4, client=2),
        get("a", "1", 5, 6, client=2),
    ],
    # A timed-out put takes effect at most once; it cannot be seen and then unseen.
    "timed-out put observed then gone": [
        put("a", "1", 0, None, client=1),
        get("a", "1", 1, 2),
        get("a", None, 3, 4),
    ],
    # One timed-out put can supply its value once, not twice around another write.
    "timed-out put used twice": [
        put("a", "1", 0, None, client=1),
        get("a", "1", 1, 2),
        put("a", "2", 3, 4),
        get("a", "2", 5, 6),
        get("a", "1", 7, 8),
    ],
    "successful cas reporting a different value": [cas("a", None, "1", (True, "9"), 0, 1)],
    "failed cas whose current equals expect": [cas("a", None, "1", (False, None), 0, 1)],
    # Strictly after the put returned, so no tie: the read is stale.
    "read just after a return": [put("a", "1", 0, 2), get("a", None, 2.5, 3)],
}


@pytest.mark.parametrize("history", NOT_LINEARIZABLE.values(), ids=NOT_LINEARIZABLE.keys())
def test_rejects_non_linearizable(history: list[Operation]) -> None:
    res = assert_not_linearizable(history)
    assert "'a'" in res.explanation


# --- histories that must be accepted ---------------------------------------------------

LINEARIZABLE = {
    "empty": [],
    "concurrent put, get sees old": [
        put("a", "1", 0, 1),
        put("a", "2", 2, 5, client=1),
        get("a", "1", 3, 4, client=2),
    ],
    "concurrent put, get sees new": [
        put("a", "1", 0, 1),
        put("a", "2", 2, 5, client=1),
        get("a", "2", 3, 4, client=2),
    ],
    "timed-out put observed later": [put("a", "1", 0, None), get("a", "1", 5, 6, client=1)],
    "timed-out put never observed": [put("a", "1", 0, None), get("a", None, 5, 6, client=1)],
    "timed-out put observed by cas": [
        put("a", "1", 0, None),
        cas("a", "1", "2", (True, "2"), 5, 6, client=1),
        get("a", "2", 7, 8, client=1),
    ],
    "timed-out cas takes effect late": [
        put("a", "0", 0, 1),
        cas("a", "0", "1", None, 2, None),
        get("a", "0", 3, 4, client=1),
        get("a", "1", 5, 6, client=1),
    ],
    # Same as "timed-out put used twice" but with two identical timed-out puts.
    "two identical timed-out puts both take effect": [
        put("a", "1", 0, None, client=1),
        put("a", "1", 0, None, client=2),
        get("a", "1", 1, 2),
        put("a", "2", 3, 4),
        get("a", "2", 5, 6),
        get("a", "1", 7, 8),
    ],
    "timed-out get is ignored": [put("a", "1", 0, 1), get("a", "garbage", 2, None)],
    "overlapping cas": [
        put("a", "0", 0, 1),
        cas("a", "0", "1", (True, "1"), 2, 6, client=1),
        cas("a", "0", "2", (False, "1"), 3, 7, client=2),
        cas("a", "1", "3", (True, "3"), 4, 8, client=3),
        get("a", "3", 9, 10),
    ],
    # Both succeed on 0 because a concurrent put writes 0 again in between.
    "cas succeeds twice with a rewrite between": [
        put("a", "0", 0, 1),
        cas("a", "0", "1", (True, "1"), 2, 5, client=1),
        cas("a", "0", "2", (True, "2"), 3, 6, client=2),
        put("a", "0", 2, 6, client=3),
    ],
    "cas on an absent key": [
        cas("a", None, "1", (True, "1"), 0, 1),
        cas("a", None, "2", (False, "1"), 2, 3),
    ],
    # A return and a call at the same instant are concurrent (A precedes B iff A.ret < B.call),
    # so the get may be ordered before the put.
    "return and call at the same time": [put("a", "1", 0, 2), get("a", None, 2, 3)],
    "independent keys": [
        put("a", "1", 0, 1),
        put("b", "2", 0, 1),
        get("b", "2", 2, 3),
        get("a", "1", 2, 3),
    ],
}


@pytest.mark.parametrize("history", LINEARIZABLE.values(), ids=LINEARIZABLE.keys())
def test_accepts_linearizable(history: list[Operation]) -> None:
    assert_linearizable(history)


def test_reports_the_bad_key_and_a_useful_explanation() -> None:
    history = [
        put("good", "1", 0, 1),
        get("good", "1", 2, 3),
        put("bad", "1", 0, 1, client=1),
        put("bad", "2", 2, 3, client=1),
        get("bad", "2", 4, 5, client=2),
        get("bad", "1", 6, 7, client=2),
    ]
    res = assert_not_linearizable(history, key="bad")
    # The explanation names the longest prefix (3 ops ending in "2") and the failing read.
    assert "3 ops" in res.explanation
    assert "get() -> '1'" in res.explanation


@pytest.mark.parametrize(
    "bad",
    [
        Operation(0, 0, 1, "delete", "a"),
        Operation(0, 2, 1, "put", "a", value="1"),
        cas("a", None, "1", None, 0, 1),
        Operation(0, 0, 1, "get", "a", output=b"1"),  # bytes where str was meant
    ],
)
def test_malformed_operations_raise(bad: Operation) -> None:
    with pytest.raises(ValueError):
        check_kv([bad])


def _many_concurrent_puts(n: int) -> list[Operation]:
    """n concurrent puts followed by reads going backwards: not linearizable, but only
    after exploring every subset of the puts."""
    history = [put("a", str(i), 0, 10, client=i) for i in range(n)]
    return [*history, get("a", "0", 11, 12), get("a", "1", 13, 14)]


def test_budget_exhaustion_is_reported_as_unknown() -> None:
    res = check_kv(_many_concurrent_puts(12), budget_s=0.0)
    assert not res.ok
    assert res.timed_out
    assert res.key == "a"
    assert_not_linearizable(_many_concurrent_puts(12))


# --- generated histories ---------------------------------------------------------------

KEYS = ["a", "b", "c"]
VALUES = ["1", "2", "3"]  # few values, so that different writes often collide
SPACING = 10  # virtual time between consecutive linearization points


def _output(
    op: str, state: dict[str, str], key: str, value: str | None, expect: str | None
) -> object:
    """Apply one op to the reference dict; returns the op's output."""
    current = state.get(key)
    if op == "put":
        assert value is not None
        state[key] = value
        return None
    if op == "get":
        return current
    if current == expect:
        assert value is not None
        state[key] = value
        return (True, value)
    return (False, current)


@st.composite
def linearizable_histories(
    draw: st.DrawFn,
    *,
    keys: list[str] = KEYS,
    max_ops: int = 40,
    max_spread: int = 25,
    timeout_one_in: int = 10,  # 0: no timeouts
) -> list[Operation]:
    """Run random ops sequentially against a dict, with op i taking effect at time
    SPACING * i, then give each op an interval around that point. Spreads up to 25 make
    neighbouring ops overlap and integer times make ties common. Timed-out ops either
    took effect at their point or never did."""
    state: dict[str, str] = {}
    history: list[Operation] = []
    for i in range(draw(st.integers(1, max_ops))):
        point = SPACING * i
        op = draw(st.sampled_from(["put", "get", "cas"]))
        key = draw(st.sampled_from(keys))
        value = None if op == "get" else draw(st.sampled_from(VALUES))
        expect = draw(st.sampled_from([None, *VALUES])) if op == "cas" else None
        call = point - draw(st.integers(0, max_spread))
        ret: int | None = point + draw(st.integers(0, max_spread))
        timed_out = timeout_one_in > 0 and draw(st.integers(1, timeout_one_in)) == 1
        output = None
        if not timed_out or draw(st.booleans()):  # a timed-out op may never take effect
            output = _output(op, state, key, value, expect)
        if timed_out:
            ret, output = None, None
        client = draw(st.integers(0, 7))
        history.append(Operation(client, call, ret, op, key, value, expect, output))
    # Always end with a completed read of some key, so there is a get to mutate.
    key = draw(st.sampled_from(keys))
    point = SPACING * len(history)
    history.append(Operation(0, point, point, "get", key, output=state.get(key)))
    return history


def _completed_gets(history: list[Operation]) -> list[int]:
    return [i for i, o in enumerate(history) if o.op == "get" and o.ret is not None]


@settings(max_examples=300, deadline=None)
@given(linearizable_histories())
def test_generated_histories_are_linearizable(history: list[Operation]) -> None:
    assert_linearizable(history)


@settings(max_examples=200, deadline=None)
@given(linearizable_histories(), st.data())
def test_read_of_a_never_written_value_is_rejected(
    history: list[Operation], data: st.DataObject
) -> None:
    assert_linearizable(history)
    i = data.draw(st.sampled_from(_completed_gets(history)))
    history[i] = replace(history[i], output="never-written")
    assert_not_linearizable(history, key=history[i].key)


@settings(max_examples=200, deadline=None)
@given(linearizable_histories(), st.data())
def test_read_of_a_value_only_written_later_is_rejected(
    history: list[Operation], data: st.DataObject
) -> None:
    """The value is written, but only by a put called after the get returned, so no
    linearization can show it to the get. Unlike a never-written value this is not
    caught by the up-front checks: the search itself must refute it."""
    i = data.draw(st.sampled_from(_completed_gets(history)))
    key = history[i].key
    end = max(max(o.call, o.ret or o.call) for o in history) + 1
    history[i] = replace(history[i], output="late")
    history.append(put(key, "late", end, end + 1))
    assert_not_linearizable(history, key=key)


@settings(max_examples=200, deadline=None)
@given(linearizable_histories(max_spread=4, timeout_one_in=0), st.data())
def test_changed_output_in_sequential_history_is_rejected(
    history: list[Operation], data: st.DataObject
) -> None:
    """With spreads below SPACING / 2 no two ops overlap, so the only linearization is
    the real-time order and any other output for a get or cas is impossible."""
    targets = [i for i, o in enumerate(history) if o.op != "put"]
    i = data.draw(st.sampled_from(targets))
    o = history[i]
    if o.op == "get":
        new = data.draw(st.sampled_from([None, *VALUES]).filter(lambda v: v != o.output))
        history[i] = replace(o, output=new)
    else:
        assert isinstance(o.output, tuple)
        ok, current = o.output
        if ok:  # the key held expect: a failure report is wrong whatever it says
            history[i] = replace(o, output=(False, data.draw(st.sampled_from(VALUES))))
        else:  # the key did not hold expect: neither success nor another value fits
            wrong = data.draw(
                st.sampled_from([(True, o.value), *((False, v) for v in [None, *VALUES])])
            )
            if wrong == (False, current):
                wrong = (True, o.value)
            history[i] = replace(o, output=wrong)
    assert_not_linearizable(history, key=o.key)


def brute_force(history: list[Operation]) -> bool:
    """Linearizability straight from the definition, for tiny single-key histories: some
    subset of the timed-out ops plus all completed ops, in an order that respects real
    time (A before B whenever A.ret < B.call), replays against the model with every
    completed op's output matching."""
    done = [o for o in history if o.ret is not None]
    timed_out = [o for o in history if o.ret is None]
    for r in range(len(timed_out) + 1):
        for extra in itertools.combinations(timed_out, r):
            for order in itertools.permutations([*done, *extra]):
                if _respects_real_time(order) and _replays(order):
                    return True
    return False


def _respects_real_time(order: tuple[Operation, ...]) -> bool:
    return not any(
        later.ret is not None and later.ret < earlier.call
        for i, earlier in enumerate(order)
        for later in order[i + 1 :]
    )


def _replays(order: tuple[Operation, ...]) -> bool:
    state: dict[str, str] = {}
    for o in order:
        out = _output(o.op, state, o.key, o.value, o.expect)
        if o.ret is not None and o.op != "put" and out != o.output:
            return False
    return True


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to 6 ops on one key with arbitrary (mostly wrong) outputs and tie-prone times."""
    history = []
    values = st.sampled_from([None, "1", "2"])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["put", "get", "cas"]))
        call = draw(st.integers(0, 6))
        ret = None if draw(st.integers(0, 4)) == 0 else call + draw(st.integers(0, 4))
        value = draw(st.sampled_from(["1", "2"])) if op != "get" else None
        expect = draw(values) if op == "cas" else None
        output: object = None
        if op == "get":
            output = draw(values)
        elif op == "cas":
            output = (draw(st.booleans()), draw(values))
        history.append(
            Operation(draw(st.integers(0, 3)), call, ret, op, "a", value, expect, output)
        )
    return history


@settings(max_examples=1000, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force(history: list[Operation]) -> None:
    expected = brute_force(history)
    event("linearizable" if expected else "not linearizable")
    res = check_kv(history)
    assert res.ok == expected, res.explanation
    assert not res.timed_out


def reference_check(history: list[Operation]) -> bool:
    """A plain memoised search, straight from the definition, for single-key histories
    of a few dozen ops: linearize any op called before the earliest return still
    pending; timed-out ops are optional and unchecked; done when every completed op is
    linearized. None of the checker's pruning rules."""
    completed = frozenset(i for i, o in enumerate(history) if o.ret is not None)
    refuted: set[tuple[frozenset[int], str | None]] = set()

    def extend(done: frozenset[int], state: dict[str, str]) -> bool:
        if completed <= done:
            return True
        memo_key = (done, state.get("a"))
        if memo_key in refuted:
            return False
        first_ret = min(history[i].ret or 0 for i in completed - done)
        for i, o in enumerate(history):
            if i in done or o.call > first_ret:
                continue
            after = dict(state)
            out = _output(o.op, after, o.key, o.value, o.expect)
            if (o.ret is None or o.op == "put" or out == o.output) and extend(done | {i}, after):
                return True
        refuted.add(memo_key)
        return False

    return extend(frozenset(), {})


@st.composite
def near_linearizable_histories(draw: st.DrawFn) -> list[Operation]:
    """Linearizable single-key histories with many timeouts, then up to two outputs
    replaced by random ones: about half stay linearizable."""
    history = draw(linearizable_histories(keys=["a"], max_ops=18, max_spread=30, timeout_one_in=4))
    targets = [i for i, o in enumerate(history) if o.ret is not None and o.op != "put"]
    values = st.sampled_from([None, *VALUES])
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.sampled_from(targets))
        o = history[i]
        output = draw(values) if o.op == "get" else (draw(st.booleans()), draw(values))
        history[i] = replace(o, output=output)
    return history


@settings(max_examples=500, deadline=None)
@given(near_linearizable_histories())
def test_agrees_with_reference_search(history: list[Operation]) -> None:
    expected = reference_check(history)
    event("linearizable" if expected else "not linearizable")
    res = check_kv(history)
    assert res.ok == expected, res.explanation
    assert not res.timed_out


# --- size ------------------------------------------------------------------------------


def simulated_history(
    rng: random.Random,
    n_ops: int,
    n_keys: int,
    n_clients: int,
    timeout_rate: float = 0.02,
    unique_values: bool = False,
) -> list[Operation]:
    """Clients each run one op at a time, like the simulator's: every op gets a random
    interval and a linearization point inside it (a timed-out op may never take effect);
    outputs come from applying the ops to a dict in linearization-point order."""
    keys = [f"k{i}" for i in range(n_keys)]
    free = [(rng.random(), c) for c in range(n_clients)]  # (time the client is idle, client)
    heapq.heapify(free)
    drafts: list[tuple[int, float, float | None, str, str, str | None, str | None]] = []
    points: list[tuple[float, int]] = []
    issued: dict[str, list[str | None]] = {}  # values written per key, for plausible cas
    for i in range(n_ops):
        call, client = heapq.heappop(free)
        op = rng.choice(["put", "get", "get", "cas"])
        key = rng.choice(keys)
        recent = issued.setdefault(key, [None])
        expect = rng.choice(recent[-3:]) if op == "cas" else None
        value = None
        if op != "get":
            value = f"v{i}" if unique_values else str(rng.randrange(5))
            recent.append(value)
        duration = rng.expovariate(1.0)
        ret: float | None = call + duration
        if rng.random() < timeout_rate:
            ret = None
            if rng.random() < 0.5:
                points.append((call + rng.uniform(0, 5 * duration), i))
            heapq.heappush(free, (call + 5.0, client))  # the client gives up and moves on
        else:
            assert ret is not None
            points.append((rng.uniform(call, ret), i))
            heapq.heappush(free, (ret + rng.expovariate(5.0), client))
        drafts.append((client, call, ret, op, key, value, expect))
    outputs: dict[int, object] = {}
    state: dict[str, str] = {}
    for _, i in sorted(points):
        _, _, _, op, key, value, expect = drafts[i]
        outputs[i] = _output(op, state, key, value, expect)
    return [
        Operation(c, call, ret, op, key, value, expect, outputs.get(i) if ret is not None else None)
        for i, (c, call, ret, op, key, value, expect) in enumerate(drafts)
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_large_simulated_history_checks_within_budget(seed: int) -> None:
    history = simulated_history(random.Random(seed), n_ops=3000, n_keys=20, n_clients=8)
    res = check_kv(history, budget_s=10.0)
    assert res.ok, res.explanation
    assert not res.timed_out


def test_large_simulated_history_with_one_stale_read_is_rejected() -> None:
    history = simulated_history(random.Random(7), n_ops=3000, n_keys=20, n_clients=8)
    i = _completed_gets(history)[len(history) // 4]
    key = history[i].key
    end = max(max(o.call, o.ret or o.call) for o in history) + 1
    history[i] = replace(history[i], output="late")
    history.append(put(key, "late", end, end + 1))
    res = check_kv(history, budget_s=10.0)
    assert not res.ok
    assert not res.timed_out, res.explanation
    assert res.key == key
