"""Share prices: real fetches are labelled yfinance, failures and an open breaker fall back
to a seeded simulated feed labelled simulated, and the breaker opens after fail_max."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from support import wait_until

from edge_agent import quotes
from edge_agent.quotes import QuoteFeed, call_with_timeout, metric_for
from vigil.agent_settings import BreakerSettings, QuoteSettings


def settings(
    *symbols: str, fail_max: int = 3, reset_s: float = 60.0, source: str = "yfinance"
) -> QuoteSettings:
    return QuoteSettings(
        symbols=list(symbols),
        source=source,
        breaker=BreakerSettings(fail_max=fail_max, reset_timeout_s=reset_s),
    )


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, symbol: str) -> tuple[float, str]:
        self.calls += 1
        raise ConnectionError("Yahoo unreachable")


class Replay:
    """Replays recorded prices, in order, per symbol."""

    def __init__(self, prices: dict[str, list[tuple[float, str]]]) -> None:
        self.prices = {s: list(p) for s, p in prices.items()}

    def __call__(self, symbol: str) -> tuple[float, str]:
        return self.prices[symbol].pop(0)


@pytest.mark.parametrize(
    ("symbol", "metric"),
    [
        ("AAPL", "price_AAPL"),
        ("brk-b", "price_BRK-B"),
        ("^GSPC", "price_GSPC"),
        ("EURUSD=X", "price_EURUSDX"),
        ("BRK.A", "price_BRK.A"),
    ],
)
def test_metric_names_are_sanitized(symbol, metric):
    assert metric_for(symbol) == metric


def test_a_symbol_with_nothing_usable_is_refused():
    with pytest.raises(ValueError, match="no usable metric name"):
        QuoteFeed(settings("^=^"), seed=1, fetcher=Failing())


def test_real_prices_are_labelled_yfinance():
    feed = QuoteFeed(
        settings("AAPL", "SAP.DE"),
        seed=1,
        fetcher=Replay(
            {"AAPL": [(189.5, "USD"), (190.25, "USD")], "SAP.DE": [(172.1, "EUR"), (173.0, "EUR")]}
        ),
    )
    first, second = feed.sample(), feed.sample()
    assert [(s.kind, s.metric, s.value, s.unit, dict(s.tags)) for s in first] == [
        ("quote", "price_AAPL", 189.5, "USD", {"symbol": "AAPL", "source": "yfinance"}),
        ("quote", "price_SAP.DE", 172.1, "EUR", {"symbol": "SAP.DE", "source": "yfinance"}),
    ]
    assert [s.value for s in second] == [190.25, 173.0]


def test_breaker_opens_after_fail_max_failures_and_readings_are_simulated(caplog):
    fetch = Failing()
    feed = QuoteFeed(settings("AAPL", fail_max=3), seed=1, fetcher=fetch)
    with caplog.at_level(logging.DEBUG, logger="edge_agent.quotes"):
        got = [feed.sample()[0] for _ in range(10)]
    assert fetch.calls == 3  # then the open breaker stops trying
    assert feed.breaker.current_state == "open" and feed.breaker_state == "open"
    assert feed.failures == 3
    assert all(s.tags["source"] == "simulated" and s.unit == "USD" for s in got)
    assert all(s.value > 0 for s in got) and len({s.value for s in got}) > 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "breaker open" in warnings[0].getMessage()
    assert "Yahoo unreachable" in warnings[0].getMessage()


def test_bad_prices_count_as_failures():
    feed = QuoteFeed(
        settings("AAPL", fail_max=2),
        seed=1,
        fetcher=Replay({"AAPL": [(float("nan"), "USD"), (-1.0, "USD")]}),
    )
    assert [s.tags["source"] for s in feed.sample() + feed.sample()] == ["simulated"] * 2
    assert feed.breaker.current_state == "open"


def test_breaker_closes_again_when_the_source_is_back_and_simulation_continues_from_it():
    prices: list[tuple[float, str] | Exception] = [
        (100.0, "EUR"),
        ConnectionError("down"),
        (101.0, "EUR"),
    ]

    def flaky(symbol: str) -> tuple[float, str]:
        item = prices.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    feed = QuoteFeed(settings("SAP", fail_max=1, reset_s=0.05), seed=1, fetcher=flaky)
    real = feed.sample()[0]
    fallback = feed.sample()[0]
    assert (real.value, real.tags["source"]) == (100.0, "yfinance")
    assert fallback.tags["source"] == "simulated" and fallback.unit == "EUR"
    assert 99.0 < fallback.value < 101.0  # walks on from the last real price
    assert feed.breaker.current_state == "open"

    def real_price():
        sample = feed.sample()[0]  # simulated (no fetch) while the breaker is open
        return sample if sample.tags["source"] == "yfinance" else None

    back = wait_until(real_price, timeout=5, interval=0.02, what="a real price after the reset")
    assert back.value == 101.0 and feed.breaker.current_state == "closed"
    assert feed.breaker_state == "closed"


def test_without_yfinance_installed_prices_are_simulated_and_said_once(monkeypatch, caplog):
    monkeypatch.setattr(quotes, "has_yfinance", lambda: False)
    with caplog.at_level(logging.WARNING, logger="edge_agent.quotes"):
        feed = QuoteFeed(settings("AAPL"), seed=1)
    assert feed.simulated_only
    assert [s.tags["source"] for s in feed.sample() + feed.sample()] == ["simulated"] * 2
    (warning,) = caplog.records
    assert "yfinance is not installed" in warning.getMessage()
    assert "vigil[prices]" in warning.getMessage()


def test_simulated_source_never_fetches_and_repeats_for_a_seed():
    fetch = Failing()

    def run(seed: int) -> list[float]:
        feed = QuoteFeed(settings("AAPL", "MSFT", source="simulated"), seed=seed, fetcher=fetch)
        return [s.value for _ in range(5) for s in feed.sample()]

    assert run(1) == run(1) != run(2)
    assert fetch.calls == 0


def test_a_hanging_fetch_is_bounded():
    release = threading.Event()

    def hang(symbol: str) -> tuple[float, str]:
        release.wait(10)
        return 1.0, "USD"

    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no quote for AAPL within 0\.2s"):
        call_with_timeout(hang, "AAPL", 0.2)
    assert time.monotonic() - started < 2
    release.set()


def test_the_real_yfinance_fetcher_fails_fast_offline_or_gives_a_price():
    """No internet here: yfinance cannot resolve Yahoo's host and fails in well under a
    second. Where Yahoo is reachable the reading is real; either way it is bounded."""
    feed = QuoteFeed(settings("AAPL", fail_max=1), seed=1)
    started = time.monotonic()
    got = feed.sample()[0]
    assert time.monotonic() - started < 15
    assert got.metric == "price_AAPL" and got.value > 0
    if got.tags["source"] == "simulated":
        assert feed.failures == 1 and feed.breaker.current_state == "open"
    else:
        assert got.tags["source"] == "yfinance"
