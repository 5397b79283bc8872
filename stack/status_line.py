"""The live terminal of ``make run``: after "Vigil is running", a compact line every few
seconds from the processes' own metrics (pure: :func:`summarize`, :func:`format_line`)::

    12:00:05  in 41.8/s  stored 41.6/s  dead 0  firing 2  emails 5  servers 3/3  hints 0

``in``: messages ingest received, ``stored``: readings stored, ``dead``: dead letters so far,
``firing``: alerts firing now, ``emails``: notifications delivered, ``servers``: storage
servers up (as the API sees them), ``hints``: points queued for servers that are down.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from vigil.metrics import Scrape, sample_sum


@dataclass(frozen=True)
class Totals:
    """What the line shows, from one scrape of every process (``None``: no process of that
    kind answered)."""

    at: float
    received: float | None  # ingest: messages in, so far
    stored: float | None  # ingest: readings stored, so far
    dead_letters: float
    alerts_firing: float | None
    emails: float | None
    servers_up: int | None
    servers: int | None
    hints: float | None


def _has(samples: Scrape, name: str) -> bool:
    return any(n == name for n, _ in samples)


def summarize(scrapes: Mapping[str, Scrape | None], at: float) -> Totals:
    """The totals of one round of scrapes (``process name: samples``, None if it did not
    answer): ingest members summed, the API's view of the storage servers."""
    ingest = [s for n, s in scrapes.items() if n.startswith("ingest") and s is not None]
    engine, notifier, api = (scrapes.get(k) for k in ("alert_engine", "notifier", "api"))
    answered = [s for s in scrapes.values() if s is not None]
    up = [
        v for (n, _), v in (api or {}).items() if n == "vigil_storage_server_up"
    ]  # one per server, from the API (it probes every one)
    return Totals(
        at=at,
        received=sum(sample_sum(s, "vigil_messages_in_total") for s in ingest) if ingest else None,
        stored=sum(sample_sum(s, "vigil_messages_out_total") for s in ingest) if ingest else None,
        dead_letters=sum(sample_sum(s, "vigil_dead_letters_total") for s in answered),
        alerts_firing=sample_sum(engine, "vigil_alerts_firing") if engine is not None else None,
        emails=sample_sum(notifier, "vigil_messages_out_total") if notifier is not None else None,
        servers_up=sum(1 for v in up if v >= 1) if api is not None and up else None,
        servers=len(up) if api is not None and up else None,
        hints=sum(sample_sum(s, "vigil_storage_hint_points") for s in ingest)
        if ingest and any(_has(s, "vigil_storage_hint_points") for s in ingest)
        else None,
    )


def _rate(now: float | None, before: float | None, dt: float) -> str:
    if now is None:
        return "-"
    if before is None or dt <= 0 or now < before:  # no earlier round, or a restart
        return "…"
    return f"{(now - before) / dt:.1f}/s"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_line(now: Totals, before: Totals | None) -> str:
    """One line: rates against the previous round, counts as they are."""
    dt = now.at - before.at if before is not None else 0.0
    servers = "-" if now.servers is None else f"{now.servers_up}/{now.servers}"
    return "  ".join(
        [
            time.strftime("%H:%M:%S", time.localtime(now.at)),
            f"in {_rate(now.received, before.received if before else None, dt)}",
            f"stored {_rate(now.stored, before.stored if before else None, dt)}",
            f"dead {_count(now.dead_letters)}",
            f"firing {_count(now.alerts_firing)}",
            f"emails {_count(now.emails)}",
            f"servers {servers}",
            f"hints {_count(now.hints)}",
        ]
    )
