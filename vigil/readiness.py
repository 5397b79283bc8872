"""Readiness as a signal: a small JSON file, written atomically, that says whether a service
is ready and since when (``--ready-file``; the launcher and the tests wait on it).

A consumer is ready once the broker has granted all its subscriptions (from then on its
persistent session queues every message for it), and not ready while it is disconnected.
The file names the writer's pid, so a reader can tell a file left by an earlier run of the
service from one written by the process it started.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from vigil.atomic import write_atomic


@dataclass(frozen=True, slots=True)
class ReadyState:
    service: str
    pid: int
    ready: bool
    since_ms: int
    detail: str = ""

    @classmethod
    def parse(cls, text: str) -> ReadyState | None:
        """The state in a ready file's text, or None for text that is not one (total)."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        service, pid, ready, since = (data.get(k) for k in ("service", "pid", "ready", "since_ms"))
        detail = data.get("detail", "")
        if not (
            isinstance(service, str)
            and isinstance(pid, int)
            and not isinstance(pid, bool)
            and isinstance(ready, bool)
            and isinstance(since, int)
            and not isinstance(since, bool)
            and isinstance(detail, str)
        ):
            return None
        return cls(service, pid, ready, since, detail)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"


def read_ready(path: Path) -> ReadyState | None:
    """The state in ``path``, or None if there is no (valid) file."""
    try:
        return ReadyState.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def is_ready(path: Path, pid: int | None = None) -> bool:
    """Whether ``path`` says ready (and, given ``pid``, was written by that process)."""
    state = read_ready(path)
    return state is not None and state.ready and (pid is None or state.pid == pid)


class Readiness:
    """What one service says about itself; with no path, only remembered (and a gauge)."""

    def __init__(self, service: str, path: Path | None) -> None:
        self.service = service
        self.path = path
        self._last: tuple[bool, str] | None = None

    def set(self, ready: bool, detail: str = "") -> None:
        if self._last == (ready, detail):
            return
        self._last = (ready, detail)
        if self.path is None:
            return
        state = ReadyState(self.service, os.getpid(), ready, int(time.time() * 1000), detail)
        write_atomic(self.path, state.to_json())
