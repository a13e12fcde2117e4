"""The word tracker from the original Go tinyraft, as a Module: it counts the words it sees.

The Go example appended the raw command bytes as a word; here commands are JSON so a bad
one can be told apart and answered plainly. Everything is UTF-8 JSON:

    apply {"op":"add","word":W}   -> {"count":N}            N = times W was seen, this one included
    query {"op":"count","word":W} -> {"count":N}            0 for a word never seen
    query {"op":"top","n":N}      -> {"top":[[W,C],...]}    the N most seen, ties alphabetical

A word is a non-empty string without whitespace, counted exactly as given ("Go" != "go").
A bad command raises ValueError before changing anything; the SDK returns it as
{"error":"ValueError: ..."}.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from typing import Any

from tinyraft.module import Module


def _dump(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _load(raw: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON object: {exc}") from None
    if not isinstance(msg, dict):
        raise ValueError("not a JSON object")
    return msg


def _word(msg: dict[str, Any]) -> str:
    word = msg.get("word")
    if not isinstance(word, str) or word.split() != [word]:  # also rejects ""
        raise ValueError('"word" must be a non-empty string without whitespace')
    return word


class WordTrackerModule(Module):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def apply(self, command: bytes, index: int) -> bytes:
        msg = _load(command)
        if msg.get("op") != "add":
            raise ValueError('the only command is {"op":"add","word":W}')
        word = _word(msg)
        self.counts[word] += 1
        return _dump({"count": self.counts[word]})

    def query(self, request: bytes) -> bytes:
        msg = _load(request)
        if msg.get("op") == "count":
            return _dump({"count": self.counts[_word(msg)]})
        if msg.get("op") == "top":
            n = msg.get("n")
            if type(n) is not int or n < 1:  # type(): True is an int too
                raise ValueError('"n" must be a whole number >= 1')
            top = heapq.nsmallest(n, self.counts.items(), key=lambda wc: (-wc[1], wc[0]))
            return _dump({"top": [list(wc) for wc in top]})
        raise ValueError('queries are {"op":"count","word":W} and {"op":"top","n":N}')

    def snapshot(self) -> bytes:
        return _dump(self.counts)

    def restore(self, data: bytes) -> None:
        counts = json.loads(data)
        if not isinstance(counts, dict) or not all(type(c) is int for c in counts.values()):
            raise ValueError("a wordtracker snapshot is a JSON object of word counts")
        self.counts = Counter(counts)
