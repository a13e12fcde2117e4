"""Batch answers in both wire forms, shared by the Caller and Module protocols.

A QueryBatch reply is either packed (`answers`, one per question, and `errors`, the
refused positions with their reasons) or, from a peer older than that form, one
`results` message per question with `answer` and `error`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def unpack(reply: Any) -> tuple[list[bytes], dict[int, str]]:
    """(answers, refused position -> reason) of a reply in either form."""
    if reply.results:
        answers = [r.answer for r in reply.results]
        return answers, {i: r.error for i, r in enumerate(reply.results) if r.error}
    return list(reply.answers), dict(reply.errors)


def as_results[R](
    answers: list[bytes], errors: dict[int, str], result: Callable[..., R]
) -> list[R]:
    """The older form: one `result(answer=..., error=...)` message per question."""
    return [result(answer=a, error=errors.get(i, "")) for i, a in enumerate(answers)]
