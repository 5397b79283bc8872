"""Share prices as readings: fetched from Yahoo Finance through yfinance behind a circuit
breaker, with a seeded simulated random walk as the fallback.

A quote per symbol (:mod:`vigil.symbols`): kind ``quote``, metric ``price``, unit the
currency of its market, tags ``{"symbol": SYMBOL, "source": "yfinance"|"simulated"}``.
Ingest stores it once per symbol, whichever agent fetched it.

Each round fetches every symbol whose market is open (:mod:`edge_agent.markets`; with
``market_hours`` false, every symbol) in **one** call: the fetcher takes the symbols and
returns ``{symbol: price}`` for those it has. A symbol it has no price for, a failed call or
an open breaker gives the simulated price, which walks on from the last real price of that
symbol, or from a plausible recent price (``REFERENCE_PRICES``). A symbol whose market is
closed gives nothing. ``source: simulated`` never fetches.

The default fetcher is ``yfinance.download`` of the day's one-minute bars, bounded by a
timeout. Offline, yfinance fails in well under a second (its HTTP client cannot resolve
query2.finance.yahoo.com), so the breaker opens after ``fail_max`` rounds; the bound covers
networks that swallow packets instead.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import pybreaker

from edge_agent.markets import is_open, market_of
from edge_agent.samples import Sample
from vigil.agent_settings import MarketSpec, QuoteSettings
from vigil.symbols import PRICE_METRIC

log = logging.getLogger(__name__)

#: symbols → the prices found (a symbol left out has none)
Fetcher = Callable[[Sequence[str]], Mapping[str, float]]
Clock = Callable[[], datetime]

YFINANCE_TIMEOUT_S = 5.0
#: vigil_quote_breaker_state's value for each state of the breaker
BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}
#: where a simulated price starts when no real one was seen: recent closes (late 2025) of
#: common symbols; any other symbol starts at 100
REFERENCE_PRICES: dict[str, float] = {
    "AAPL": 268.0, "MSFT": 510.0, "GOOGL": 280.0, "GOOG": 281.0, "AMZN": 230.0,
    "NVDA": 185.0, "META": 620.0, "TSLA": 430.0, "NFLX": 110.0, "IBM": 300.0,
    "INTC": 38.0, "AMD": 240.0, "ORCL": 220.0, "JPM": 305.0, "KO": 70.0, "DIS": 110.0,
    "ENI.MI": 16.0, "ENEL.MI": 8.5, "ISP.MI": 5.4, "UCG.MI": 62.0, "STLAM.MI": 9.0,
    "RACE.MI": 340.0, "SAP.DE": 215.0, "SIE.DE": 235.0, "BP.L": 4.4, "HSBA.L": 10.5,
    "BTC-USD": 95_000.0, "ETH-USD": 3_200.0, "EURUSD=X": 1.16, "^GSPC": 6_700.0,
}  # fmt: skip
DEFAULT_START_PRICE = 100.0


def call_with_timeout(fn: Fetcher, symbols: Sequence[str], timeout_s: float) -> Mapping[str, float]:
    """``fn(symbols)`` on a daemon thread; TimeoutError if it has not returned in time (the
    thread is left to finish on its own, and never holds up the process's exit)."""
    outcome: list[Mapping[str, float] | BaseException] = []

    def work() -> None:
        try:
            outcome.append(fn(symbols))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=work, name="quotes", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise TimeoutError(f"no quotes for {', '.join(symbols)} within {timeout_s:g}s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _yfinance_quotes(symbols: Sequence[str]) -> Mapping[str, float]:
    import yfinance  # noqa: PLC0415 - pulls in pandas: only when quotes are really fetched

    # yfinance logs every failed request; the breaker below reports outages once.
    logging.getLogger("yfinance").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():  # pandas deprecations inside yfinance, not ours
        warnings.simplefilter("ignore")
        frame = _download(yfinance, symbols)
    prices: dict[str, float] = {}
    if frame is not None and not frame.empty:
        for symbol in symbols:
            try:
                closes = frame[symbol]["Close"].dropna()
            except KeyError:
                continue
            if len(closes):
                prices[symbol] = float(closes.iloc[-1])
    if not prices:
        raise LookupError(f"yfinance has no recent price for {', '.join(symbols)}")
    return prices


def _download(yfinance: Any, symbols: Sequence[str]) -> Any:
    """Today's one-minute bars of every symbol, in one request (columns: symbol, field)."""
    return yfinance.download(
        list(symbols),
        period="1d",
        interval="1m",
        group_by="ticker",
        auto_adjust=False,
        progress=False,
        threads=False,
        timeout=YFINANCE_TIMEOUT_S,
        multi_level_index=True,
    )


def has_yfinance() -> bool:
    """Whether yfinance is installed (the ``prices`` extra), without importing it."""
    return importlib.util.find_spec("yfinance") is not None


def fetch_yfinance(symbols: Sequence[str]) -> Mapping[str, float]:
    """The latest price of each of ``symbols`` from Yahoo Finance, in one call, bounded."""
    return call_with_timeout(_yfinance_quotes, symbols, YFINANCE_TIMEOUT_S * 2)


class RandomWalk:
    """A seeded geometric random walk: the simulated price of one symbol, from a plausible
    recent price."""

    def __init__(self, seed: int, symbol: str) -> None:
        self._rng = random.Random(f"{seed}:{symbol}")
        start = REFERENCE_PRICES.get(symbol.upper(), DEFAULT_START_PRICE)
        self.price = start * math.exp(self._rng.gauss(0.0, 0.01))

    def step(self) -> float:
        self.price = max(0.0001, self.price * math.exp(self._rng.gauss(0.0, 0.002)))
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
    """One quote reading per symbol whose market is open, each time :meth:`sample` runs."""

    def __init__(
        self,
        settings: QuoteSettings,
        seed: int,
        fetcher: Fetcher | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.symbols: list[str] = []
        self.simulated_only = settings.source == "simulated"
        self._no_yfinance = fetcher is None and not self.simulated_only and not has_yfinance()
        self._fetch = fetcher or fetch_yfinance
        self._clock = clock or (lambda: datetime.now(UTC))
        self._outages = _Outages()
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=settings.breaker.fail_max,
            reset_timeout=settings.breaker.reset_timeout_s,
            listeners=[self._outages],
            name="yfinance",
        )
        self._seed = seed
        self._walks: dict[str, RandomWalk] = {}
        self._markets: dict[str, MarketSpec] = {}
        self.set_symbols(settings.symbols)

    def set_symbols(self, symbols: list[str]) -> None:
        """Quote ``symbols`` from now on (live configuration, or the API's assignment). The
        breaker and the walks of symbols kept carry on."""
        wanted = [s.upper() for s in symbols]
        if wanted and self._no_yfinance and not self.simulated_only:
            log.warning(
                "yfinance is not installed (pip install 'vigil[prices]'): simulated prices for %s",
                ", ".join(wanted),
            )
            self.simulated_only = True
        self.symbols = wanted
        self._walks = {s: self._walks.get(s) or RandomWalk(self._seed, s) for s in wanted}
        self._markets = {s: market_of(s, self.settings.markets) for s in wanted}

    def open_symbols(self) -> list[str]:
        """The symbols whose market is open now (all of them without ``market_hours``)."""
        if not self.settings.market_hours:
            return list(self.symbols)
        now = self._clock()
        return [s for s in self.symbols if is_open(self._markets[s], now)]

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
        """A quote of every symbol whose market is open, fetched in one call."""
        due = self.open_symbols()
        if not due:
            return []
        prices: Mapping[str, float] = {}
        if not self.simulated_only:
            try:
                prices = self.breaker.call(self._checked_fetch, due)
            except Exception as exc:  # the fetch failed, or the breaker refused to try
                log.debug("no quotes for %s from %s: %s", due, self.breaker.name, exc)
        out = []
        for symbol in due:
            walk = self._walks[symbol]
            price = prices.get(symbol)
            if price is None:
                price, source = walk.step(), "simulated"
            else:
                walk.price, source = price, "yfinance"
            out.append(
                Sample(
                    "quote",
                    PRICE_METRIC,
                    price,
                    self._markets[symbol].currency,
                    {"symbol": symbol, "source": source},
                )
            )
        return out

    def _checked_fetch(self, symbols: Sequence[str]) -> dict[str, float]:
        """The prices the fetcher gave that are positive numbers, of the symbols asked for;
        none at all counts as a failure (the breaker's)."""
        found = self._fetch(symbols)
        wanted = set(symbols)
        prices: dict[str, float] = {}
        for symbol, raw in found.items():
            try:
                price = float(raw)
            except (TypeError, ValueError):
                continue
            if symbol in wanted and math.isfinite(price) and price > 0:
                prices[symbol] = price
        if not prices:
            raise LookupError(f"no usable price for {', '.join(symbols)}")
        return prices
