"""The simulator's replicated state machine: the kv example's commands behind sessions.

It applies committed entries exactly as the sidecar will: decode the command batch,
ask the session table whether each command is new, apply new ones, cache results."""

from __future__ import annotations

import json

from tinyraft.core.sessions import Command, SessionTable, Verdict, decode_batch
from tinyraft.core.types import Entry, EntryKind


def apply_kv(data: dict[str, str], command: bytes) -> bytes:
    """put / cas on a dict, with the kv example's JSON command format."""
    try:
        cmd = json.loads(command)
        op, key = cmd["op"], cmd["key"]
        if op == "put":
            data[key] = cmd["value"]
            return b'{"ok":true}'
        if op == "cas":
            current = data.get(key)
            if current == cmd["expect"]:
                data[key] = cmd["value"]
                return json.dumps({"ok": True, "value": cmd["value"]}).encode()
            return json.dumps({"ok": False, "value": current}).encode()
    except (ValueError, KeyError, TypeError):
        pass
    return b'{"error":"bad command"}'


class KvMachine:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.sessions = SessionTable()
        self.applied = 0

    def apply(self, entry: Entry) -> list[tuple[Command, bytes]]:
        """Apply one committed entry; returns each command with its (maybe cached) result."""
        self.applied = entry.index
        if entry.kind is not EntryKind.NORMAL or not entry.data:
            return []
        out = []
        for cmd in decode_batch(entry.data):
            verdict, result = self.sessions.check(cmd, entry.index)
            if verdict is Verdict.NEW:
                result = apply_kv(self.data, cmd.payload)
                self.sessions.record(cmd, entry.index, result)
            elif verdict is not Verdict.DUPLICATE:
                result = json.dumps({"error": verdict.value}).encode()
            out.append((cmd, result))
        return out

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return json.dumps(
            {"data": self.data, "sessions": self.sessions.encode().hex(), "applied": self.applied}
        ).encode()

    def restore(self, blob: bytes) -> None:
        state = json.loads(blob)
        self.data = state["data"]
        self.sessions = SessionTable()
        self.sessions.restore(bytes.fromhex(state["sessions"]))
        self.applied = state["applied"]
