"""Share prices: every open market's symbols fetched in one call, real prices labelled
yfinance, failures and an open breaker falling back to a seeded simulated feed (from a
plausible price) labelled simulated, the breaker opening after fail_max, and nothing fetched
while a symbol's market is closed (the clock injected)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import pytest
from support import wait_until

from edge_agent import quotes
from edge_agent.markets import ALWAYS, is_open, market_of
from edge_agent.quotes import REFERENCE_PRICES, QuoteFeed, RandomWalk, call_with_timeout
from vigil.agent_settings import DEFAULT_MARKETS, BreakerSettings, MarketSpec, QuoteSettings


def settings(
    *symbols: str,
    fail_max: int = 3,
    reset_s: float = 60.0,
    source: str = "yfinance",
    market_hours: bool = False,
) -> QuoteSettings:
    return QuoteSettings(
        symbols=list(symbols),
        source=source,
        breaker=BreakerSettings(fail_max=fail_max, reset_timeout_s=reset_s),
        market_hours=market_hours,
    )


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, symbols) -> dict[str, float]:
        self.calls += 1
        raise ConnectionError("Yahoo unreachable")


class Replay:
    """Replays recorded prices, in order, per symbol; records each call's symbols."""

    def __init__(self, prices: dict[str, list[float]]) -> None:
        self.prices = {s: list(p) for s, p in prices.items()}
        self.calls: list[list[str]] = []

    def __call__(self, symbols) -> dict[str, float]:
        self.calls.append(list(symbols))
        return {s: self.prices[s].pop(0) for s in symbols if self.prices.get(s)}


def test_real_prices_are_labelled_yfinance_and_fetched_in_one_call():
    fetch = Replay({"AAPL": [189.5, 190.25], "SAP.DE": [172.1, 173.0]})
    feed = QuoteFeed(settings("AAPL", "SAP.DE"), seed=1, fetcher=fetch)
    first, second = feed.sample(), feed.sample()
    assert [(s.kind, s.metric, s.value, s.unit, dict(s.tags)) for s in first] == [
        ("quote", "price", 189.5, "USD", {"symbol": "AAPL", "source": "yfinance"}),
        ("quote", "price", 172.1, "EUR", {"symbol": "SAP.DE", "source": "yfinance"}),
    ]
    assert [s.value for s in second] == [190.25, 173.0]
    assert fetch.calls == [["AAPL", "SAP.DE"]] * 2


def test_a_symbol_the_source_has_no_price_for_is_simulated_and_labelled_so():
    fetch = Replay({"AAPL": [189.5]})
    feed = QuoteFeed(settings("AAPL", "NOPE"), seed=1, fetcher=fetch)
    got = {s.tags["symbol"]: s for s in feed.sample()}
    assert got["AAPL"].tags["source"] == "yfinance"
    assert got["NOPE"].tags["source"] == "simulated" and got["NOPE"].value > 0
    assert feed.failures == 0  # one price was found: the call worked


def test_simulated_prices_start_from_a_plausible_recent_price():
    for symbol, reference in REFERENCE_PRICES.items():
        assert 0.95 * reference < RandomWalk(7, symbol).step() < 1.05 * reference
    assert 90 < RandomWalk(7, "UNLISTED").step() < 110


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
        fetcher=Replay({"AAPL": [float("nan"), -1.0]}),
    )
    assert [s.tags["source"] for s in feed.sample() + feed.sample()] == ["simulated"] * 2
    assert feed.breaker.current_state == "open"


def test_breaker_closes_again_when_the_source_is_back_and_simulation_continues_from_it():
    prices: list[float | Exception] = [100.0, ConnectionError("down"), 101.0]

    def flaky(symbols) -> dict[str, float]:
        item = prices.pop(0)
        if isinstance(item, Exception):
            raise item
        return {"SAP.DE": item}

    feed = QuoteFeed(settings("SAP.DE", fail_max=1, reset_s=0.05), seed=1, fetcher=flaky)
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

    def hang(symbols) -> dict[str, float]:
        release.wait(10)
        return {"AAPL": 1.0}

    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no quotes for AAPL, MSFT within 0\.2s"):
        call_with_timeout(hang, ["AAPL", "MSFT"], 0.2)
    assert time.monotonic() - started < 2
    release.set()


def test_the_real_yfinance_fetcher_fails_fast_offline_or_gives_a_price():
    """No internet here: yfinance cannot resolve Yahoo's host and fails in well under a
    second. Where Yahoo is reachable the reading is real; either way it is bounded."""
    feed = QuoteFeed(settings("AAPL", fail_max=1), seed=1)
    started = time.monotonic()
    got = feed.sample()[0]
    assert time.monotonic() - started < 15
    assert got.metric == "price" and got.value > 0
    if got.tags["source"] == "simulated":
        assert feed.failures == 1 and feed.breaker.current_state == "open"
    else:
        assert got.tags["source"] == "yfinance"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("symbol", "market"),
    [("AAPL", "XNYS"), ("^GSPC", "XNYS"), ("ENI.MI", "XMIL"), ("eni.mi", "XMIL"),
     ("BP.L", "XLON"), ("SAP.DE", "XETR"), ("BTC-USD", "24x7"), ("EURUSD=X", "24x7")],
)  # fmt: skip
def test_each_symbol_trades_on_the_market_of_its_suffix(symbol, market):
    assert market_of(symbol, DEFAULT_MARKETS).name == market


def test_a_symbol_no_market_claims_is_always_open():
    only = [MarketSpec(name="XMIL", timezone="Europe/Rome", suffixes=[".MI"])]
    assert market_of("AAPL", only) is ALWAYS
    assert is_open(ALWAYS, at("2026-12-06T03:00:00+00:00"))  # a Sunday night


@pytest.mark.parametrize(
    ("when", "open_"),
    [
        ("2026-12-07T09:30:00-05:00", True),  # Monday, New York's opening minute
        ("2026-12-07T09:29:00-05:00", False),
        ("2026-12-07T15:59:00-05:00", True),
        ("2026-12-07T16:00:00-05:00", False),  # the close
        ("2026-12-05T12:00:00-05:00", False),  # Saturday
        ("2026-12-25T12:00:00-05:00", False),  # a holiday in the config
        ("2026-07-06T14:00:00+00:00", True),  # 10:00 in New York in summer (EDT)
    ],
)
def test_market_hours_in_the_markets_own_time_zone(when, open_):
    nyse = MarketSpec(name="XNYS", timezone="America/New_York", open="09:30", close="16:00",
                      suffixes=[""], holidays=["2026-12-25"])  # fmt: skip
    assert is_open(nyse, at(when)) is open_


def test_only_the_symbols_of_open_markets_are_fetched_and_none_while_all_are_closed():
    now = [at("2026-12-07T15:00:00+00:00")]  # 10:00 New York, 16:00 Milan: both open
    fetch = Replay({"AAPL": [1.0, 2.0, 3.0], "ENI.MI": [4.0, 5.0]})
    feed = QuoteFeed(
        settings("AAPL", "ENI.MI", market_hours=True), seed=1, fetcher=fetch,
        clock=lambda: now[0],
    )  # fmt: skip
    assert [s.tags["symbol"] for s in feed.sample()] == ["AAPL", "ENI.MI"]
    now[0] = at("2026-12-07T17:00:00+00:00")  # Milan closed at 17:30 local (16:30 UTC)
    assert [(s.tags["symbol"], s.value) for s in feed.sample()] == [("AAPL", 2.0)]
    now[0] = at("2026-12-08T03:00:00+00:00")  # night everywhere
    assert feed.sample() == []
    assert fetch.calls == [["AAPL", "ENI.MI"], ["AAPL"]]  # nothing asked while closed
