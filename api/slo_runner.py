"""Evaluating the SLOs (:mod:`api.slo`) continuously: one thread, ``slo-check``, scrapes the
services' ``/metrics`` every ``api.slo_interval_s``, keeps the scrapes of the longest window,
and evaluates every SLO stored in the API database. A change to violated counts one
violation, stored with its time; the current state of each is kept for ``GET /slos``.

Targets come from the configuration: every ingest process's, the alert engine's and the
notifier's metrics port, at its ``metrics_host`` (127.0.0.1 for a wildcard). A target that
does not answer is named in the state (``errors``) and its samples are missing from the
indicator until it answers again.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.db import Store
from api.slo import SOURCES, TARGET_LABEL, Samples, Slo, evaluate
from vigil.metrics import Scrape, scrape_metrics
from vigil.settings import VigilConfig

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_S = 3.0
_WILDCARD = ("0.0.0.0", "::", "")  # noqa: S104 - the hosts a service may bind, not this one


def targets_of(config: VigilConfig) -> dict[str, list[str]]:
    """``{source: [metrics URL, ...]}`` from the configuration (ports 0 left out)."""

    def url(host: str, port: int) -> str:
        return f"http://{'127.0.0.1' if host in _WILDCARD else host}:{port}/metrics"

    members = config.ingest.processes().values()
    out = {
        "ingest": [url(m.metrics_host, m.metrics_port) for m in members if m.metrics_port],
        "alert_engine": [url(config.alert_engine.metrics_host, config.alert_engine.metrics_port)]
        if config.alert_engine.metrics_port
        else [],
        "notifier": [url(config.notifier.metrics_host, config.notifier.metrics_port)]
        if config.notifier.metrics_port
        else [],
    }
    return out


def scrape(url: str) -> Scrape:
    return scrape_metrics(url, SCRAPE_TIMEOUT_S)


@dataclass
class SloState:
    sli: float | None = None
    good: float = 0
    total: float = 0
    state: str = "no_data"
    since: float | None = None  # when the state began (epoch s)
    evaluated_at: float | None = None
    errors: list[str] = field(default_factory=list)


class SloRunner:
    def __init__(
        self,
        database: Path,
        targets: Mapping[str, list[str]],
        interval_s: float,
    ) -> None:
        self.database = database
        self.targets = dict(targets)
        self.interval_s = interval_s
        self._history: collections.deque[tuple[float, dict[str, Samples]]] = collections.deque()
        self._states: dict[str, SloState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slo-check", daemon=True)
        self._warned: set[str] = set()

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def state(self, slo_id: str) -> SloState:
        with self._lock:
            return self._states.get(slo_id, SloState())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step(time.time())
            except Exception:
                log.exception("evaluating the SLOs failed; trying again in %.0fs", self.interval_s)

    def step(self, now: float) -> None:
        """Scrape every target once, then evaluate every SLO (the thread's one step)."""
        scraped: dict[str, Samples] = {}
        errors: dict[str, list[str]] = {}
        for source, urls in self.targets.items():
            merged: Scrape = {}
            for url in urls:
                try:
                    for key, value in scrape(url).items():
                        # each process's samples apart: they are summed, never overwritten
                        merged[(key[0], key[1] | {(TARGET_LABEL, url)})] = value
                except (OSError, ValueError) as exc:
                    errors.setdefault(source, []).append(f"{url}: {exc}")
                    if url not in self._warned:
                        self._warned.add(url)
                        log.warning(
                            "SLOs: cannot scrape %s (%s): its samples are missing", url, exc
                        )
                else:
                    self._warned.discard(url)
            scraped[source] = merged
        store = Store.open(self.database)
        try:
            slos = store.slos()
            longest = max((s.window_s for s, _, _ in slos), default=0.0)
            self._history.append((now, scraped))
            while len(self._history) > 1 and self._history[1][0] <= now - longest - self.interval_s:
                self._history.popleft()
            for slo, _count, _last in slos:
                self._evaluate(store, slo, now, errors.get(SOURCES[slo.kind], []))
        finally:
            store.close()

    def _evaluate(self, store: Store, slo: Slo, now: float, errors: list[str]) -> None:
        source = SOURCES[slo.kind]
        history = [(t, samples[source]) for t, samples in self._history if source in samples]
        reading = evaluate(slo, history, now)
        with self._lock:
            old = self._states.get(slo.id, SloState())
            changed = reading.state != old.state
            self._states[slo.id] = SloState(
                reading.sli,
                reading.good,
                reading.total,
                reading.state,
                now if changed or old.since is None else old.since,
                now,
                errors,
            )
        if changed and reading.state == "violated":
            store.count_slo_violation(slo.id, round(now * 1000))
            log.warning(
                "SLO %s violated: %s is %.4f over the last %.0fs (target %g)",
                slo.id,
                slo.kind,
                reading.sli or 0.0,
                slo.window_s,
                slo.target,
            )
        elif changed and old.state == "violated":
            log.info("SLO %s met again (%s %.4f)", slo.id, slo.kind, reading.sli or 0.0)

    def view(self, slo: Slo, violations: int, last_violation_at: int | None) -> dict[str, Any]:
        st = self.state(slo.id)
        return {
            **slo.to_dict(),
            "state": st.state,
            "sli": st.sli,
            "good": st.good,
            "total": st.total,
            "since": None if st.since is None else round(st.since * 1000),
            "evaluated_at": None if st.evaluated_at is None else round(st.evaluated_at * 1000),
            "violations": violations,
            "last_violation_at": last_violation_at,
            "errors": st.errors,
        }
