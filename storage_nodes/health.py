"""What a process knows of each storage server's health (pure: no I/O, an injectable clock).

A server is ``up`` until a request to it fails to reach it (unreachable, timeout, refused
credentials, missing database), then ``down`` until a background probe gets an answer. An
operator can also ``fail`` a server on purpose (drain): it is treated as down, whatever the
probe says, until it is recovered. Writes for a server that is not up go straight to its hint
queue, and reads leave it out, so no request spends a timeout on a server known to be down.

Each transition is logged once, with the server and the reason; repeated failures of a server
already down are counted, not logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

log = logging.getLogger(__name__)

State = Literal["up", "down", "failed"]


@dataclass(frozen=True, slots=True)
class ServerHealth:
    state: State
    since: float  # wall clock of the last state change
    last_seen: float | None  # wall clock of the last answer, None if it never answered
    reason: str  # why it is down or failed ("" when up)

    @property
    def available(self) -> bool:
        return self.state == "up"


class Health:
    def __init__(self, names: Iterable[str], clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        now = clock()
        self._lock = threading.Lock()
        self._servers = {n: ServerHealth("up", now, None, "") for n in names}
        self.transitions = 0  # for tests and metrics: how many state changes happened

    def names(self) -> list[str]:
        with self._lock:
            return list(self._servers)

    def set_names(self, names: Iterable[str]) -> None:
        """Follow a new membership: keep what is known of the servers that stay."""
        now = self._clock()
        with self._lock:
            self._servers = {
                n: self._servers.get(n, ServerHealth("up", now, None, "")) for n in names
            }

    def get(self, name: str) -> ServerHealth:
        with self._lock:
            return self._servers[name]

    def available(self, name: str) -> bool:
        with self._lock:
            s = self._servers.get(name)
            return s is not None and s.available

    def snapshot(self) -> dict[str, ServerHealth]:
        with self._lock:
            return dict(self._servers)

    def seen(self, name: str) -> None:
        """``name`` answered a request (it may still be failed on purpose)."""
        now = self._clock()
        with self._lock:
            s = self._servers.get(name)
            if s is None:
                return
            if s.state == "down":
                self._servers[name] = ServerHealth("up", now, now, "")
                self.transitions += 1
                log.warning("storage server %s is up again (down for %.1f s)", name, now - s.since)
            else:
                self._servers[name] = replace(s, last_seen=now)

    def mark_down(self, name: str, reason: str) -> bool:
        """``name`` failed a request or a probe; True if that changed its state."""
        now = self._clock()
        with self._lock:
            s = self._servers.get(name)
            if s is None or s.state != "up":
                return False
            self._servers[name] = ServerHealth("down", now, s.last_seen, reason)
            self.transitions += 1
        log.warning(
            "storage server %s is down (%s): its writes go to its hint queue, reads skip it",
            name,
            reason,
        )
        return True

    def set_failed(self, name: str, failed: bool, reason: str = "failed by the operator") -> None:
        """Drain (``failed``) or recover a server on purpose. A recovered server is down until
        a probe answers, so nothing is sent to it before it is known to be there."""
        now = self._clock()
        with self._lock:
            s = self._servers.get(name)
            if s is None:
                return
            if failed and s.state != "failed":
                self._servers[name] = ServerHealth("failed", now, s.last_seen, reason)
            elif not failed and s.state == "failed":
                self._servers[name] = ServerHealth("down", now, s.last_seen, "recovering")
            else:
                return
            self.transitions += 1
        log.warning("storage server %s is %s", name, "failed (drained)" if failed else "recovering")
