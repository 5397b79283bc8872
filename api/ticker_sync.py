"""Tickers people follow, pushed to the quote agents (:mod:`vigil.symbols`).

One thread, ``ticker-sync``, keeps three things true, woken by a change of subscriptions,
by a quote agent going online or offline, and every ``interval_s`` in any case:

1. **Each followed symbol is fetched by exactly one agent**: the symbols followed by anyone
   are assigned over the quote agents online (all configured ones while none is), by
   rendezvous hashing, and each agent's live configuration (``vigil/config/devices/{d}``,
   retained, versioned) gets ``tickers`` = its symbols. A quote agent's ``tickers`` are the
   API's: an admin's live configuration keeps its other settings, not its tickers. An agent
   whose list did not change gets nothing new.
2. **Nobody follows it: not fetched.** The symbol leaves every agent's list.
3. **After the retention period, its data goes**: a symbol nobody has followed for
   ``storage.retention_s`` has its series (``quote.<SYMBOL>``/``price``) deleted on every
   replica, through the same tombstone as an admin's deletion, so no hint or repair brings
   it back. With no retention (0) nothing is deleted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from api.db import Store
from vigil.config_core import KeyedError
from vigil.device_config import DeviceConfig, decode_device_settings
from vigil.messages import DeviceStatus
from vigil.symbols import PRICE_METRIC, assign, series_device

log = logging.getLogger(__name__)

#: how long a wake-up waits for more changes before it syncs
SETTLE_S = 2.0

#: a live configuration for ``device``, published retained; False if the broker did not
#: confirm it (the API publishes every stored configuration again on each connect)
Publish = Callable[[str, bytes], bool]
#: delete the points of a series before a time (epoch ms), on every replica
DeleteSeries = Callable[[str, str, int], object]


class TickerSync:
    def __init__(
        self,
        database: Path,
        agents: Sequence[str],
        status: Callable[[str], DeviceStatus | None],
        publish: Publish,
        *,
        retention_s: float,
        delete_series: DeleteSeries | None,
        interval_s: float = 30.0,
    ) -> None:
        self.database = database
        self.agents = sorted(agents)
        self._status = status
        self._publish = publish
        self.retention_s = retention_s
        self._delete_series = delete_series
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ticker-sync", daemon=True)
        self._assigned: dict[str, str] = {}
        self._online: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self.agents:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def poke(self) -> None:
        """Sync soon (a subscription changed)."""
        self._wake.set()

    def on_status(self, device: str) -> None:
        """A status arrived: sync if a quote agent went online or offline."""
        if device not in self.agents:
            return
        status = self._status(device)
        online = status is not None and status.state == "online"
        if online != (device in self._online):
            self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self.interval_s):
                # agents starting together come online one by one: one sync for them all,
                # not a reassignment for each
                self._stop.wait(SETTLE_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
                self.clean_up(int(time.time() * 1000))
            except Exception:
                log.exception("syncing the followed symbols failed; trying again")

    # -- the work -------------------------------------------------------------------------
    def assigned(self) -> dict[str, str]:
        """``{symbol: agent}`` as last pushed."""
        with self._lock:
            return dict(self._assigned)

    def tickers_of(self, agent: str) -> list[str]:
        return sorted(s for s, a in self.assigned().items() if a == agent)

    def sync(self) -> dict[str, str]:
        """Assign every followed symbol and push each agent's list that changed."""
        with self._lock:
            store = Store.open(self.database)
            try:
                followed = store.followed()
                self._online = {
                    a
                    for a in self.agents
                    if (st := self._status(a)) is not None and st.state == "online"
                }
                plan = assign(followed, sorted(self._online) or self.agents)
                for agent in self.agents:
                    self._push(store, agent, plan.get(agent, []))
                before = self._assigned
                self._assigned = {s: a for a, symbols in plan.items() for s in symbols}
            finally:
                store.close()
        moved = {s: a for s, a in self._assigned.items() if before.get(s) != a}
        if moved:
            log.info(
                "symbols assigned: %s",
                ", ".join(f"{s} to {a}" for s, a in sorted(moved.items())),
            )
        return dict(self._assigned)

    def _push(self, store: Store, agent: str, tickers: list[str]) -> None:
        row = store.device(agent)
        current: dict[str, object] = {}
        if row is not None and row.config is not None:
            try:
                current = json.loads(row.config)
            except ValueError:
                current = {}
            if current.get("tickers") == tickers:
                return
        wanted = {**current, "tickers": tickers}
        try:
            settings = decode_device_settings(wanted)
        except KeyedError as exc:  # a stored configuration that no longer validates
            log.error("cannot push tickers to %s: %s: %s", agent, exc.key, exc.reason)
            return
        version = store.set_device_config(agent, settings.to_json().decode())
        live = DeviceConfig(device=agent, version=version, **settings.given())
        if not self._publish(agent, live.encode()):
            log.warning(
                "the broker did not confirm %s's tickers (version %d) in time; they are "
                "published again on the next connect",
                agent,
                version,
            )

    def clean_up(self, now_ms: int) -> list[str]:
        """Delete the data of each symbol nobody has followed for the retention period;
        returns the symbols deleted."""
        store = Store.open(self.database)
        try:
            dropped = store.note_followed(set(store.followed()), now_ms)
            if not self.retention_s or self._delete_series is None:
                return []
            done = []
            for symbol, since in sorted(dropped.items()):
                if now_ms - since < self.retention_s * 1000:
                    continue
                self._delete_series(series_device(symbol), PRICE_METRIC, now_ms)
                store.forget_symbol(symbol)
                log.info(
                    "deleted the quotes of %s: nobody has followed it for %.0f days",
                    symbol,
                    (now_ms - since) / 86_400_000,
                )
                done.append(symbol)
            return done
        finally:
            store.close()
