"""Share prices as readings: fetched from Yahoo Finance through yfinance behind a circuit
breaker, with a seeded simulated random walk as the fallback.

A reading per symbol: metric ``price_<SYMBOL>`` (characters a metric name cannot hold are
dropped), unit the currency, tags ``{"symbol": SYMBOL, "source": "yfinance"|"simulated"}``,
kind ``quote``. A failed fetch or an open breaker gives the simulated price, which walks on
from the last real price of that symbol. ``source: simulated`` never fetches.

The fetcher is any callable ``symbol -> (price, currency)``; the default one uses yfinance,
bounded by a timeout. Offline, yfinance fails in well under a second (its HTTP client cannot
resolve query2.finance.yahoo.com), so the breaker opens after ``fail_max`` rounds; the bound
covers networks that swallow packets instead.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
import re
import threading
from collections.abc import Callable
from typing import Literal

import pybreaker

from edge_agent.samples import Sample
from vigil.agent_settings import QuoteSettings
from vigil.names import is_name

log = logging.getLogger(__name__)

Fetcher = Callable[[str], tuple[float, str]]

YFINANCE_TIMEOUT_S = 3.0
#: vigil_quote_breaker_state's value for each state of the breaker
BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}
DEFAULT_CURRENCY = "USD"
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


def metric_for(symbol: str) -> str:
    """``price_<SYMBOL>`` with every character a metric name cannot hold dropped."""
    metric = ("price_" + _NOT_NAME.sub("", symbol.upper()))[:64]
    if metric == "price_" or not is_name(metric):
        raise ValueError(f"quote symbol {symbol!r} gives no usable metric name")
    return metric


def call_with_timeout(fn: Fetcher, symbol: str, timeout_s: float) -> tuple[float, str]:
    """``fn(symbol)`` on a daemon thread; TimeoutError if it has not returned in time (the
    thread is left to finish on its own, and never holds up the process's exit)."""
    outcome: list[tuple[float, str] | BaseException] = []

    def work() -> None:
        try:
            outcome.append(fn(symbol))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=work, name=f"quote-{symbol}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise TimeoutError(f"no quote for {symbol} within {timeout_s:g}s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _yfinance_quote(symbol: str) -> tuple[float, str]:
    import yfinance  # noqa: PLC0415 - pulls in pandas: only when quotes are really fetched

    # yfinance logs every failed request; the breaker below reports outages once.
    logging.getLogger("yfinance").setLevel(logging.CRITICAL)
    ticker = yfinance.Ticker(symbol)
    hist = ticker.history(period="5d", interval="1d", timeout=YFINANCE_TIMEOUT_S, raise_errors=True)
    if hist.empty:
        raise LookupError(f"yfinance has no recent price for {symbol}")
    price = float(hist["Close"].iloc[-1])
    currency = (ticker.history_metadata or {}).get("currency") or DEFAULT_CURRENCY
    return price, str(currency)


def has_yfinance() -> bool:
    """Whether yfinance is installed (the ``prices`` extra), without importing it."""
    return importlib.util.find_spec("yfinance") is not None


def fetch_yfinance(symbol: str) -> tuple[float, str]:
    """The last close of ``symbol`` and its currency from Yahoo Finance, bounded in time."""
    return call_with_timeout(_yfinance_quote, symbol, YFINANCE_TIMEOUT_S * 2)


class RandomWalk:
    """A seeded geometric random walk: the simulated price of one symbol."""

    def __init__(self, seed: int, symbol: str) -> None:
        self._rng = random.Random(f"{seed}:{symbol}")
        self.price = round(self._rng.uniform(20.0, 500.0), 2)

    def step(self) -> float:
        self.price = max(0.01, self.price * math.exp(self._rng.gauss(0.0, 0.002)))
        return round(self.price, 4)


class _Outages(pybreaker.CircuitBreakerListener):
    """Counts failed fetches and logs an outage when it starts and when it ends, not every
    retry in between."""

    def __init__(self) -> None:
        self.failures = 0
        self.last_error = ""

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state else None
        if new_state.name == pybreaker.STATE_OPEN and old == pybreaker.STATE_CLOSED:
            log.warning(
                "quote source %s failing (%s): breaker open, retrying every %gs; "
                "simulated prices meanwhile",
                cb.name,
                self.last_error,
                cb.reset_timeout,
            )
        elif new_state.name == pybreaker.STATE_CLOSED and old is not None:
            log.info("quote source %s is back: breaker closed", cb.name)


class QuoteFeed:
    """One quote reading per configured symbol each time :meth:`sample` is called."""

    def __init__(self, settings: QuoteSettings, seed: int, fetcher: Fetcher | None = None) -> None:
        self.symbols = [s.upper() for s in settings.symbols]
        self.metrics = {s: metric_for(s) for s in self.symbols}
        self.simulated_only = settings.source == "simulated"
        if fetcher is None and not self.simulated_only and self.symbols and not has_yfinance():
            log.warning(
                "yfinance is not installed (pip install 'vigil[prices]'): simulated prices for %s",
                ", ".join(self.symbols),
            )
            self.simulated_only = True
        self._fetch = fetcher or fetch_yfinance
        self._outages = _Outages()
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=settings.breaker.fail_max,
            reset_timeout=settings.breaker.reset_timeout_s,
            listeners=[self._outages],
            name="yfinance",
        )
        self._seed = seed
        self._walks = {s: RandomWalk(seed, s) for s in self.symbols}
        self._currency = dict.fromkeys(self.symbols, DEFAULT_CURRENCY)

    def set_symbols(self, symbols: list[str]) -> None:
        """Quote ``symbols`` from now on (live configuration). The breaker and the walks of
        symbols kept carry on; ValueError (nothing changed) for a symbol without a usable
        metric name."""
        wanted = [s.upper() for s in symbols]
        metrics = {s: metric_for(s) for s in wanted}
        self.symbols, self.metrics = wanted, metrics
        self._walks = {s: self._walks.get(s) or RandomWalk(self._seed, s) for s in wanted}
        self._currency = {s: self._currency.get(s, DEFAULT_CURRENCY) for s in wanted}

    @property
    def breaker_state(self) -> Literal["closed", "open", "half-open"]:
        """The breaker's state: closed (fetching), open (simulated prices), half-open."""
        state = self.breaker.current_state
        return state if state in ("open", "half-open") else "closed"  # type: ignore[return-value]

    @property
    def failures(self) -> int:
        """Failed fetches so far (calls refused by the open breaker are not fetches)."""
        return self._outages.failures

    def sample(self) -> list[Sample]:
        return [self._quote(s) for s in self.symbols]

    def _quote(self, symbol: str) -> Sample:
        walk = self._walks[symbol]
        source = "simulated"
        if self.simulated_only:
            price = walk.step()
        else:
            try:
                price, currency = self.breaker.call(self._checked_fetch, symbol)
            except Exception as exc:  # the fetch failed, or the breaker refused to try
                log.debug("no quote for %s from %s: %s", symbol, self.breaker.name, exc)
                price = walk.step()
            else:
                source = "yfinance"
                walk.price, self._currency[symbol] = price, currency
        return Sample(
            "quote",
            self.metrics[symbol],
            price,
            self._currency[symbol],
            {"symbol": symbol, "source": source},
        )

    def _checked_fetch(self, symbol: str) -> tuple[float, str]:
        price, currency = self._fetch(symbol)
        price = float(price)
        if not math.isfinite(price) or price <= 0:
            raise ValueError(f"price {price!r} for {symbol} is not a positive number")
        return price, (str(currency) or DEFAULT_CURRENCY)[:32]
