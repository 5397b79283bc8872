"""``GET /devices/<device>/metrics/<metric>/stream``: a series' new readings as server-sent
events, for the console's live charts (any client may read it).

**Fed by storage, polled.** The API's broker user may not read the data topics (its grants
in ``broker/provision.py``: ``config/#``, ``status/#``, ``firing/#``, ``notifications/#``,
never ``data/#``), so the stream does not listen to readings in flight: every
``LIVE_POLL_S`` (1 s) it asks storage for the points since the last one it sent, with the
query ``/history`` makes (merged replicas, read repair). A reading shows once ingest stored
it, which is also when the agent lets go of it. A reading stored later with an older
timestamp (an outbox drained after an outage) is not sent; a reload shows it.

**Authenticated like every route.** ``EventSource`` cannot send an ``Authorization`` header,
and a token in the URL would end in access logs and browser history; the console reads the
stream with ``fetch()`` and a ``ReadableStream`` instead, with ``Authorization: Bearer``
as on every other call, and parses the events itself.

**Bounded.** A stream ends after ``LIVE_STREAM_S`` (60 s) with an ``end`` event, and the
client reconnects with ``?since=`` the last time it has, so a revoked token stops working
within a minute. Each open stream holds one of waitress's threads: at most
``LIVE_STREAMS_MAX`` (4) run at once per API process; one more is a 503 with Retry-After.

Events: ``points`` (``{"device", "metric", "points": [{"ts", "value", "id"}]}``, oldest
first), ``problem`` (``{"detail"}``: storage did not answer this time; the stream goes on),
``busy`` (no stream slot after all: reconnect later), ``end`` (``{"since"}``: reconnect from
there); comment lines keep the connection alive.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, request

from api.db import get_store
from api.names import check_path_names
from api.owners import visible_device
from api.problems import Problem
from api.resources import resources
from api.validation import InvalidParameter, parse_history_args
from storage_nodes import Point, RetriableStorageError, StorageError
from vigil.messages import now_ms
from vigil.symbols import is_quote_device

log = logging.getLogger(__name__)
bp = Blueprint("live", __name__)
bp.before_request(check_path_names)

#: Defaults of the app settings of the same names.
LIVE_STREAM_S = 60.0
LIVE_POLL_S = 1.0
LIVE_STREAMS_MAX = 4
#: Points asked for per poll; a full page is followed by another poll at once.
POLL_LIMIT = 1000
#: A comment line after this long without an event (proxies close idle connections).
KEEPALIVE_S = 15.0
SLOTS = "vigil_live_slots"


@dataclass
class Cursor:
    """Where a stream is in its series: the newest time sent, and the ids sent at exactly that
    time (two readings may share a millisecond; the next poll starts at that time again)."""

    since_ms: int
    ids_at_since: set[int | None] = field(default_factory=set)

    def advance(self, points: list[Point]) -> list[Point]:
        """The points of a poll (oldest first, ``ts >= since_ms``) not sent yet; moves on."""
        fresh = [
            p
            for p in points
            if p.ts > self.since_ms or (p.ts == self.since_ms and p.id not in self.ids_at_since)
        ]
        for p in fresh:
            if p.ts > self.since_ms:
                self.since_ms, self.ids_at_since = p.ts, set()
            self.ids_at_since.add(p.id)
        return fresh


class Slots:
    """How many more streams may run at once in this process."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._free = size

    @property
    def free(self) -> int:
        with self._lock:
            return self._free

    def take(self) -> bool:
        with self._lock:
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self._free += 1


def event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event (its data JSON on one line)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(frozen=True)
class Stream:
    """One stream's inputs, taken from the request before it ends (the generator runs after
    the view has returned)."""

    device: str
    metric: str
    fetch: Callable[[int], list[Point]]
    lifetime_s: float
    poll_s: float
    slots: Slots
    #: waitress's check that the client went away (None under other servers)
    disconnected: Callable[[], bool] | None = None


def events(stream: Stream, cursor: Cursor) -> Iterator[bytes]:
    """The stream's bytes. The slot is taken when the first byte is asked for and released
    when the generator ends or is closed, so an answer never read (HEAD) holds none."""
    if not stream.slots.take():
        yield event("busy", {"detail": "too many live streams; try again later"})
        return
    try:
        yield b"retry: 1000\n: live\n\n"
        started = last_sent = time.monotonic()
        while True:
            full = False
            try:
                page = stream.fetch(cursor.since_ms)
                full = len(page) >= POLL_LIMIT
                fresh = cursor.advance(page)
            except RetriableStorageError as exc:
                yield event("problem", {"detail": f"storage did not answer: {exc}"})
                fresh = []
            except StorageError as exc:
                log.warning("live stream of %s/%s: %s", stream.device, stream.metric, exc)
                yield event("problem", {"detail": f"storage refused the query: {exc}"})
                return
            now = time.monotonic()
            if fresh:
                points = [{"ts": p.ts, "value": p.value, "id": p.id} for p in fresh]
                yield event(
                    "points", {"device": stream.device, "metric": stream.metric, "points": points}
                )
                last_sent = now
            elif now - last_sent >= KEEPALIVE_S:
                yield b": keepalive\n\n"
                last_sent = now
            left = started + stream.lifetime_s - now
            if left <= 0:
                yield event("end", {"since": cursor.since_ms})
                return
            if stream.disconnected is not None and stream.disconnected():
                return
            if not full:
                time.sleep(min(stream.poll_s, left))
    finally:
        stream.slots.give()


def _since(args: dict[str, list[str]]) -> int | None:
    """``since`` (epoch ms, the only parameter), checked as ``/history`` checks it."""
    for name in args:
        if name != "since":
            raise InvalidParameter(name[:70], "unknown query parameter (allowed: since)")
    return parse_history_args(args).since_ms


def _known(device: str) -> None:
    """404 unless the caller may see ``device`` and it is one: configured, added, seen on the
    status topics, or a symbol's quotes."""
    visible_device(device)
    res = resources()
    row = get_store().device(device)
    if not (
        any(d.id == device for d in res.config.devices)
        or (row is not None and row.added)
        or res.status.get(device) is not None
        or is_quote_device(device)
    ):
        raise Problem(404, f"no device {device!r}")


@bp.get("/devices/<device>/metrics/<metric>/stream")
def stream(device: str, metric: str) -> Response:
    """The series' new readings, live, as server-sent events (``text/event-stream``).

    ``since`` (epoch ms, inclusive; default: now) is where to start: the client passes the
    time of the newest point it has, and drops a point it already has. Events ``points``,
    ``problem``, ``busy`` and ``end`` (after 60 s: reconnect with ``since``); read it with a
    streaming HTTP client that sends the bearer token (the console uses ``fetch()``)."""
    since = _since(request.args.to_dict(flat=False))
    _known(device)
    config = current_app.config
    slots: Slots = current_app.extensions.setdefault(
        SLOTS, Slots(int(config.get("LIVE_STREAMS_MAX", LIVE_STREAMS_MAX)))
    )
    if slots.free <= 0:  # a hint only: the slot itself is taken when the stream starts
        raise Problem(
            503, "too many live streams are open; try again later", headers={"Retry-After": "5"}
        )
    storage = resources().storage

    def fetch(since_ms: int) -> list[Point]:
        return storage.points(
            device, metric, since_ms=since_ms, limit=POLL_LIMIT, newest_first=False
        )

    live = Stream(
        device,
        metric,
        fetch,
        lifetime_s=float(config.get("LIVE_STREAM_S", LIVE_STREAM_S)),
        poll_s=float(config.get("LIVE_POLL_S", LIVE_POLL_S)),
        slots=slots,
        disconnected=request.environ.get("waitress.client_disconnected"),
    )
    resp = Response(events(live, Cursor(now_ms() if since is None else since)))
    resp.mimetype = "text/event-stream"
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Accel-Buffering"] = "no"  # a proxy in front must not buffer it
    return resp
