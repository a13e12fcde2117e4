"""Run a process's main coroutine on uvloop: the sidecar, the Module SDK and the bench.

uvloop's callbacks, futures and socket calls cost less than asyncio's own loop, and
each of those processes spends much of its CPU in the loop (measured: about a tenth
more commits per second at saturation). TINYRAFT_EVENT_LOOP=asyncio is the way back,
for a platform without uvloop or a problem suspected in it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

ENV = "TINYRAFT_EVENT_LOOP"


def loop_factory(
    environ: Mapping[str, str] = os.environ,
) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop TINYRAFT_EVENT_LOOP names (uvloop by default). ValueError naming
    the fix for another value, or for uvloop asked for where it is not installed."""
    choice = environ.get(ENV, "uvloop")
    if choice == "asyncio":
        return asyncio.new_event_loop
    if choice != "uvloop":
        raise ValueError(f"{ENV}={choice!r} is not an event loop; use uvloop or asyncio")
    try:
        import uvloop
    except ImportError:
        if ENV in environ:
            raise ValueError(
                f"{ENV}=uvloop but uvloop is not installed: "
                f"pip install uvloop, or set {ENV}=asyncio"
            ) from None
        return asyncio.new_event_loop  # the default, on a platform uvloop does not support
    return uvloop.new_event_loop


def loop_factory_or_exit() -> Callable[[], asyncio.AbstractEventLoop]:
    """loop_factory(), or the reason on stderr and exit 2: how a command that runs an
    event loop, or starts processes that do, checks the variable before it starts."""
    try:
        return loop_factory()
    except ValueError as err:
        print(f"tinyraft: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run[T](main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on the loop TINYRAFT_EVENT_LOOP names; exit 2 if it names none."""
    try:
        factory = loop_factory_or_exit()
    except SystemExit:
        main.close()  # never awaited: no warning about it
        raise
    return asyncio.run(main, loop_factory=factory)
