"""A caught-up member's linearizable read asks its Module while the read index is
confirmed (services._answer_while_confirming). Answers may leave only once the
confirmation is in, and only if the state they came from holds the read index it
returned. A leader yet to commit in its term, or a follower whose leader committed more
since it last said, gets a later read index than the state it asked: a write already
acknowledged may sit between the two.

The cluster tests cover a deposed leader and a cut-off follower (tests/test_chaos.py);
a later read index lasts milliseconds there, so its branch is pinned here with a
stand-in for the three things the read uses of a Member."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace

import pytest

from tinyraft.server.member import Unavailable
from tinyraft.server.services import _answer_while_confirming

REQUESTS = [b"get x", b"get y"]


class Module:
    """Answers each question with the applied index it was asked at."""

    def __init__(self, fails: Exception | None = None) -> None:
        self.asked_at: list[int] = []
        self.fails = fails

    async def query_batch(
        self, requests: list[bytes], timeout: float, min_index: int
    ) -> tuple[list[bytes], dict[int, str]]:
        self.asked_at.append(min_index)
        if self.fails is not None:
            raise self.fails
        return [b"%s@%d" % (r, min_index) for r in requests], {}


class Leader:
    def __init__(self, applied: int, read_index: int | None, module: Module) -> None:
        self.applier = SimpleNamespace(applied=applied)
        self.module = module
        self._read_index = read_index
        self.confirmed = asyncio.Event()

    async def read_index(self, lease: bool, timeout: float) -> int:
        assert not lease
        await self.confirmed.wait()  # the followers answer after the Module was asked
        if self._read_index is None:
            raise Unavailable("leadership changed during the read; retry")
        return self._read_index


async def _read(leader: Leader) -> tuple[int, object]:
    read = asyncio.create_task(_answer_while_confirming(leader, REQUESTS, 5.0))
    while not leader.module.asked_at:
        await asyncio.sleep(0)
    assert not read.done(), "answers left before the leadership was confirmed"
    leader.confirmed.set()
    return await read


def test_answers_from_a_state_that_holds_the_read_index_leave_once_confirmed() -> None:
    leader = Leader(applied=7, read_index=7, module=Module())
    index, answers = asyncio.run(_read(leader))
    assert (index, answers) == (7, (7, [b"get x@7", b"get y@7"], {}))


def test_answers_from_before_a_new_leaders_first_commit_are_dropped() -> None:
    leader = Leader(applied=7, read_index=9, module=Module())
    index, answers = asyncio.run(_read(leader))
    assert (index, answers) == (9, None), "the state at 7 may miss a write acknowledged at 8"
    assert leader.module.asked_at == [7]


def test_a_read_the_followers_do_not_confirm_fails_and_loses_no_error() -> None:
    async def scenario() -> None:
        lost: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: lost.append(ctx))
        failing = Module(fails=RuntimeError("the Module restarted"))
        leader = Leader(applied=7, read_index=None, module=failing)
        try:
            await _read(leader)
        except Unavailable:
            pass  # and its traceback, which holds the dropped query's task, goes
        else:
            pytest.fail("a read its followers did not confirm was answered")
        await asyncio.sleep(0)
        gc.collect()  # asyncio reports an error nobody retrieved when its task is freed
        assert not lost, f"asyncio logged a lost error: {lost}"

    asyncio.run(scenario())
