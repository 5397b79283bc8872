"""Values shown in error messages and logs: cut to a length, so that no input can make a
message (or a dead letter's reason, or a log line) as long as itself."""

from __future__ import annotations


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 3`` characters and ``...``."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    return cut(repr(value), limit)
