"""Run an example Module server: `python -m tinyraft.examples kv --listen 127.0.0.1:50061`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tinyraft.examples.kv import KvModule
from tinyraft.examples.wordtracker import WordTrackerModule
from tinyraft.module import ListenError, Module, run_module

EXAMPLES: dict[str, Callable[[], Module]] = {"kv": KvModule, "wordtracker": WordTrackerModule}


def main_example(name: str, listen: str) -> int:
    """Serve the named example on `listen` (HOST:PORT) until SIGINT/SIGTERM.

    Prints `module NAME listening on HOST:PORT` once serving; returns 0 after a signal,
    2 for an unknown example or an address that is malformed or cannot be bound."""
    factory = EXAMPLES.get(name)
    if factory is None:
        print(f"unknown example {name!r}; choose one of: {', '.join(EXAMPLES)}", file=sys.stderr)
        return 2

    def announce(address: str) -> None:
        print(f"module {name} listening on {address}", flush=True)

    try:
        run_module(factory(), listen, ready=announce)
    except ListenError as exc:
        print(f"--listen: {exc}", file=sys.stderr)
        return 2
    return 0
