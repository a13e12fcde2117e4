"""tinyraft: a Raft consensus sidecar. Write a deterministic state machine; tinyraft replicates it.

    from tinyraft import Caller, Module, serve_module

Exports load lazily, so `import tinyraft` (and the pure core) does not pull in gRPC."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Caller": "tinyraft.caller",
    "BlockingCaller": "tinyraft.caller",
    "RetryPolicy": "tinyraft.caller",
    "TinyraftError": "tinyraft.caller",
    "Unavailable": "tinyraft.caller",
    "CommandError": "tinyraft.caller",
    "InvalidArgument": "tinyraft.caller",
    "FailedPrecondition": "tinyraft.caller",
    "Module": "tinyraft.module",
    "serve_module": "tinyraft.module",
    "run_module": "tinyraft.module",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tinyraft' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
