"""tinyraft: a Raft consensus sidecar. Write a deterministic state machine; tinyraft replicates it."""

__version__ = "0.1.0"
