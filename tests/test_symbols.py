"""Share symbols, pure: what a symbol is, the pseudo-device its quotes are stored under, the
quote contract (metric price, tags symbol and source; only quote agents), and the assignment
of followed symbols to agents (each to exactly one, stable, minimal movement)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vigil.config_core import check_device_id
from vigil.messages import InvalidMessage, Reading, Rule, parse_readings
from vigil.symbols import InvalidSymbol, assign, check_symbol, is_symbol, series_device


@pytest.mark.parametrize(
    ("symbol", "device"),
    [("AAPL", "quote.AAPL"), ("eni.mi", "quote.ENI.MI"), ("^GSPC", "quote.GSPC"),
     ("EURUSD=X", "quote.EURUSDX"), ("BRK-B", "quote.BRK-B")],
)  # fmt: skip
def test_a_symbol_is_stored_under_its_pseudo_device(symbol, device):
    assert is_symbol(symbol) and series_device(check_symbol(symbol)) == device


@pytest.mark.parametrize("bad", ["", "^", "A B", "AAPL\n", "A" * 21, "ÄPPL", None, 5])
def test_what_is_not_a_symbol_is_refused_naming_where(bad):
    with pytest.raises(InvalidSymbol, match=r"symbols\[3\]: .* is not a ticker symbol"):
        check_symbol(bad, "symbols[3]")


def test_no_device_may_take_a_pseudo_device_id():
    with pytest.raises(ValueError, match="reserved for the share symbols"):
        check_device_id("quote.AAPL")
    assert check_device_id("quotes-desk") == "quotes-desk"


def quote(symbol: object = "aapl", source: object = "yfinance", metric: str = "price") -> bytes:
    return json.dumps(
        {"device": "dev-9", "id": 1, "ts": 1_765_000_000_000, "kind": "quote",
         "metric": metric, "value": 268.5, "unit": "USD",
         "tags": {"symbol": symbol, "source": source}}
    ).encode()  # fmt: skip


def test_a_quote_is_stored_once_per_symbol_whichever_agent_fetched_it():
    (r,) = parse_readings(quote(), "dev-9", {"dev-9"})
    assert r.device == "dev-9" and r.tags["symbol"] == "AAPL"  # confirmed to its agent
    assert r.stored_device == "quote.AAPL" and r.series_key == "quote.AAPL/price"
    assert r.as_stored().device == "quote.AAPL"
    sensor = Reading(1, "dev-1", 1, "sensor", "temperature", 20.0)
    assert sensor.as_stored() is sensor and sensor.series_key == "dev-1/temperature"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (quote(metric="price_AAPL"), "metric of a quote must be 'price'"),
        (quote(symbol="A B"), "tags.symbol of a quote: 'A B' is not a ticker symbol"),
        (quote(source="guess"), "tags.source of a quote must be one of yfinance, simulated"),
    ],
)
def test_a_quote_that_breaks_the_contract_says_why(payload, reason):
    with pytest.raises(InvalidMessage, match=reason):
        parse_readings(payload, "dev-9", {"dev-9"})


def test_a_device_that_is_not_a_quote_agent_cannot_forge_a_price():
    with pytest.raises(InvalidMessage, match=r"'dev-9' is not a quote agent.*quote of AAPL"):
        parse_readings(quote(), "dev-9", {"dev-8"})
    assert parse_readings(quote(), "dev-9")  # no policy given: the contract alone


def test_a_symbol_rule_watches_the_price_of_a_symbol_not_a_device():
    rule = Rule.from_dict({"id": "r", "symbol": "aapl", "kind": "change", "percent": 2,
                           "window_s": 300})  # fmt: skip
    assert (rule.symbol, rule.metric, rule.device) == ("AAPL", "price", None)
    with pytest.raises(InvalidMessage, match="device does not apply to a symbol rule"):
        Rule.from_dict({**rule.to_dict(), "device": "dev-1"})
    with pytest.raises(InvalidMessage, match="a symbol rule watches the quotes' 'price'"):
        Rule.from_dict({**rule.to_dict(), "metric": "temperature"})


SYMBOLS = st.lists(st.from_regex(r"[A-Z]{1,5}", fullmatch=True), max_size=40, unique=True)
AGENTS = st.lists(st.from_regex(r"agent-[0-9]{1,2}", fullmatch=True), min_size=1, max_size=6,
                  unique=True)  # fmt: skip


@given(SYMBOLS, AGENTS)
def test_each_symbol_goes_to_exactly_one_agent(symbols, agents):
    plan = assign(symbols, agents)
    assert set(plan) == set(agents)
    placed = [s for assigned in plan.values() for s in assigned]
    assert sorted(placed) == sorted(symbols)  # each once, none lost


@given(SYMBOLS, AGENTS.filter(lambda a: len(a) > 1), st.data())
def test_an_agent_going_away_moves_only_its_own_symbols(symbols, agents, data):
    gone = data.draw(st.sampled_from(agents))
    before = {s: a for a, ss in assign(symbols, agents).items() for s in ss}
    after = {s: a for a, ss in assign(symbols, [a for a in agents if a != gone]).items()
             for s in ss}  # fmt: skip
    assert {s for s in symbols if before[s] != after[s]} == {
        s for s in symbols if before[s] == gone
    }


def test_no_agent_assigns_nothing_and_names_are_compared_upper_case():
    assert assign(["AAPL"], []) == {}
    assert assign(["aapl", "AAPL"], ["a"]) == {"a": ["AAPL"]}
