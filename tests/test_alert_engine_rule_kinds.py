"""Rule kinds in the pure evaluator: hysteresis and for-duration, band, percent change over a
window, no data, device offline; device patterns and share symbols; and how each is validated."""

from __future__ import annotations

import pytest
from support import ALERT_T0 as T0
from support import reading

from alert_engine.evaluator import Evaluator, alert_id_for
from vigil.messages import DeviceStatus, InvalidMessage, Reading, Rule


def rule(**fields) -> Rule:
    return Rule.from_dict({"id": "r", "metric": "temperature", **fields})


def evaluator(*rules: Rule) -> Evaluator:
    ev = Evaluator()
    ev.replace_rules(list(rules), 1)
    return ev


def states(ev: Evaluator, values: list[float], device: str = "dev-1") -> list[tuple[int, str]]:
    """``(index, state)`` of each transition over readings 1 s apart."""
    return [(n, a.state) for n, v in enumerate(values) for a in ev.evaluate(reading(v, n, device))]


def test_hysteresis_resolves_only_past_the_clear_level():
    ev = evaluator(rule(op="above", threshold=30, clear=28))
    # 31 fires; 29 and 28.5 are below 30 but above 28: still firing; 28 is back at clear.
    assert states(ev, [25, 31, 29, 28.5, 28, 29.5, 30.5]) == [
        (1, "firing"),
        (4, "resolved"),
        (6, "firing"),
    ]


def test_hysteresis_of_a_below_rule():
    ev = evaluator(rule(op="below", threshold=5, clear=8))
    assert states(ev, [10, 4, 6, 7.9, 8, 4.9]) == [(1, "firing"), (4, "resolved"), (5, "firing")]


def test_for_duration_fires_on_the_first_reading_breaching_that_long():
    ev = evaluator(rule(op="above", threshold=30, for_s=10))
    # readings 1 s apart: breach from n=2; n=12 is 10 s later
    values = [20, 20] + [31] * 12
    got = states(ev, values)
    assert got == [(12, "firing")]
    firing = ev.state("r", "dev-1")
    assert firing is not None and firing.firing is not None
    assert firing.firing.alert_id == alert_id_for("r", "dev-1", 1_000 + 12)


def test_a_dip_inside_restarts_the_for_duration():
    ev = evaluator(rule(op="above", threshold=30, for_s=5))
    values = [31, 31, 31, 31, 29, 31, 31, 31, 31, 31, 31]
    assert states(ev, values) == [(10, "firing")]  # counted again from n=5


def test_the_alert_says_what_is_wrong():
    ev = evaluator(rule(op="above", threshold=30, clear=28, for_s=2))
    alerts = [a for n, v in enumerate([31, 31, 31, 27]) for a in ev.evaluate(reading(v, n))]
    assert [a.detail for a in alerts] == [
        "temperature on dev-1 is 31, above 30 for 2 s",
        "temperature on dev-1 is 27, back at or below 28",
    ]
    assert {a.kind for a in alerts} == {"threshold"}


def test_band_fires_outside_and_names_the_bound():
    ev = evaluator(rule(kind="band", low=30, high=80))
    alerts = [a for n, v in enumerate([50, 85, 80, 29]) for a in ev.evaluate(reading(v, n))]
    assert [(a.state, a.threshold, a.op) for a in alerts] == [
        ("firing", 80.0, "outside"),
        ("resolved", 80.0, "outside"),
        ("firing", 30.0, "outside"),
    ]
    assert alerts[0].detail == "temperature on dev-1 is 85, outside 30..80"


def price(value: float, n: int, symbol: str = "AAPL", device: str = "dev-9") -> Reading:
    """A quote as the agents send it: metric price, tags symbol and source; 60 s apart."""
    return Reading(
        id=5_000 + n,
        device=device,
        ts=T0 + 60_000 * n,
        kind="quote",
        metric="price",
        value=value,
        unit="USD",
        tags={"symbol": symbol, "source": "simulated"},
    )


def test_percent_change_over_a_window_on_a_symbol():
    ev = evaluator(Rule.from_dict({"id": "aapl", "symbol": "aapl", "kind": "change",
                                   "percent": 2, "window_s": 300}))  # fmt: skip
    quotes = [100, 100.5, 101, 101.5, 102.1, 102.0, 101.0]
    alerts = [a for n, v in enumerate(quotes) for a in ev.evaluate(price(v, n))]
    # n=4 is 2.1% above n=0 (240 s earlier, in the window); n=6 is 0.5% above n=1... the
    # oldest in its window (n=1, 300 s earlier): under 2%, so it resolves.
    assert [(a.state, a.reading_id) for a in alerts] == [("firing", 5004), ("resolved", 5006)]
    assert alerts[0].detail == "price of AAPL rose 2.10% in 300 s (100 -> 102.1)"
    assert alerts[0].symbol == "AAPL" and alerts[0].metric == "price"
    # stored and evaluated per symbol, whichever agent fetched the quote
    assert alerts[0].device == "quote.AAPL"
    # another symbol is not watched
    assert not [a for n, v in enumerate([1, 5, 10]) for a in ev.evaluate(price(v, n, "MSFT"))]


def test_percent_change_directions():
    rise = Rule.from_dict({"id": "up", "metric": "m", "kind": "change", "percent": 10,
                           "window_s": 1, "direction": "rise"})  # fmt: skip
    fall = Rule.from_dict({**rise.to_dict(), "id": "down", "direction": "fall"})
    ev = evaluator(rise, fall)
    fired = [
        a.rule_id
        for n, v in enumerate([100, 85, 100])
        for a in ev.evaluate(reading(v, n, metric="m"))
        if a.state == "firing"
    ]
    assert fired == ["down", "up"]  # -15% then +17.6%, each against the second before


def test_a_change_window_forgets_what_is_older():
    ev = evaluator(rule(kind="change", percent=10, window_s=5))
    # 100 at n=0 is out of the window by n=6: 200 there compares with n=1's 195
    assert states(ev, [100, 195, 196, 197, 198, 199, 200]) == [(1, "firing"), (6, "resolved")]


def test_nodata_fires_after_the_silence_and_resolves_on_the_next_reading():
    ev = evaluator(rule(kind="nodata", for_s=30, device="dev-*"))
    assert ev.evaluate(reading(20, 0), now_ms=T0) == []
    assert ev.tick(T0 + 29_999) == []
    fired = ev.tick(T0 + 30_000)
    assert [(a.state, a.device, a.detail) for a in fired] == [
        ("firing", "dev-1", "no temperature from dev-1 for 30 s")
    ]
    assert ev.tick(T0 + 60_000) == []  # once
    back = ev.evaluate(reading(21, 40), now_ms=T0 + 61_000)
    assert [(a.state, a.alert_id) for a in back] == [("resolved", fired[0].alert_id)]


def test_nodata_for_one_device_fires_even_if_it_never_sent():
    ev = evaluator(rule(kind="nodata", for_s=10, device="dev-7"))
    assert ev.tick(T0) == []  # watching from now
    assert [a.device for a in ev.tick(T0 + 10_000)] == ["dev-7"]


def test_nodata_ids_survive_a_crash_before_the_state_was_saved():
    """Fired, published, then a crash: the restored state fires again with the same id."""
    r = rule(kind="nodata", for_s=10)
    ev = evaluator(r)
    ev.evaluate(reading(1, 0), now_ms=T0)
    saved = ev.states
    first = ev.tick(T0 + 10_000)
    again = Evaluator.restore([r], 1, saved).tick(T0 + 12_000)
    assert [a.alert_id for a in first] == [a.alert_id for a in again]


def status(state: str, ts: int | None, device: str = "dev-1") -> DeviceStatus:
    return DeviceStatus(device, state, ts)  # type: ignore[arg-type]


def test_offline_from_the_last_will_and_back_online():
    ev = evaluator(Rule.from_dict({"id": "gone", "kind": "offline"}))
    assert ev.status(status("online", T0), T0) == []
    down = ev.status(status("offline", None), T0 + 5_000)  # the last will has no time
    assert [(a.state, a.detail) for a in down] == [("firing", "dev-1 is offline")]
    assert ev.status(status("offline", None), T0 + 6_000) == []  # the retained will again
    up = ev.status(status("online", T0 + 9_000), T0 + 9_000)
    assert [(a.state, a.alert_id) for a in up] == [("resolved", down[0].alert_id)]
    assert ev.status(status("online", T0 + 8_000), T0 + 10_000) == []  # older: ignored


def test_offline_for_a_duration_fires_on_a_tick():
    ev = evaluator(Rule.from_dict({"id": "gone", "kind": "offline", "for_s": 60}))
    assert ev.status(status("offline", None), T0) == []
    assert ev.tick(T0 + 59_000) == []
    assert [a.state for a in ev.tick(T0 + 60_000)] == ["firing"]
    # back before the duration: nothing fires
    ev2 = evaluator(Rule.from_dict({"id": "gone", "kind": "offline", "for_s": 60}))
    ev2.status(status("offline", None), T0)
    assert ev2.status(status("online", T0 + 1), T0 + 30_000) == []
    assert ev2.tick(T0 + 90_000) == []


def test_device_patterns():
    ev = evaluator(rule(op="above", threshold=30, device="green*-?"))
    fired = {
        d for d in ("greenhouse-1", "green-2", "greenhouse-12", "dev-1")
        for a in ev.evaluate(reading(31, 1, d))
    }  # fmt: skip
    assert fired == {"greenhouse-1", "green-2"}


def test_changing_a_rules_kind_resolves_its_alert():
    hot = rule(op="above", threshold=30)
    ev = evaluator(hot)
    ev.evaluate(reading(31, 0))
    change = ev.replace_rules([rule(kind="band", low=0, high=40)], 2, T0 + 5_000)
    assert [a.state for a in change.resolved] == ["resolved"]


def test_a_rule_with_a_new_level_keeps_its_pending_breach():
    ev = evaluator(rule(op="above", threshold=30, for_s=10))
    states(ev, [31] * 5)
    ev.replace_rules([rule(op="above", threshold=30, for_s=3)], 2)
    assert [a.state for a in ev.evaluate(reading(31, 5))] == ["firing"]  # 5 s since n=0


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"op": "above", "threshold": 30, "clear": 31}, "clear \\(31\\) must be at or below"),
        ({"op": "below", "threshold": 5, "clear": 4}, "clear \\(4\\) must be at or above"),
        ({"op": "above", "threshold": 1, "for_s": -1}, "for_s must be 0..2592000 seconds"),
        ({"kind": "band", "low": 5, "high": 5}, "low \\(5\\) must be below high \\(5\\)"),
        ({"kind": "band", "low": 5}, "missing required field 'high'"),
        ({"kind": "band", "low": 1, "high": 2, "op": "above"}, "op do not apply to a band"),
        ({"kind": "change", "percent": 0, "window_s": 5}, "percent must be in"),
        ({"kind": "change", "percent": 2}, "missing required field 'window_s'"),
        ({"kind": "change", "percent": 2, "window_s": 5, "direction": "up"}, "direction must"),
        ({"kind": "nodata"}, "missing required field 'for_s'"),
        ({"kind": "nodata", "for_s": 0}, "for_s must be 1..2592000"),
        ({"kind": "sometimes"}, "kind must be one of threshold, band, change, nodata, offline"),
        ({"op": "above", "threshold": 1, "device": "dev 1"}, "device id or pattern"),
        ({"op": "above", "threshold": 1, "device": "**"}, None),
        ({"op": "above", "threshold": 1, "symbol": "AA PL"}, "is not a ticker"),
        ({"op": "above", "threshold": 1, "colour": "red"}, "unknown field\\(s\\): colour"),
    ],
)
def test_invalid_rules_say_why(body, why):
    if why is None:  # valid: a pattern of wildcards only
        assert rule(**body).is_pattern
        return
    with pytest.raises(InvalidMessage, match=why):
        rule(**body)


def test_offline_rules_watch_the_status_not_a_metric():
    assert Rule.from_dict({"id": "o", "kind": "offline"}).metric == "status"
    with pytest.raises(InvalidMessage, match="leave out metric"):
        Rule.from_dict({"id": "o", "kind": "offline", "metric": "temperature"})


def test_every_kind_round_trips():
    for body in (
        {"op": "below", "threshold": 2, "clear": 4, "for_s": 30},
        {"kind": "band", "low": -1, "high": 1, "for_s": 5},
        {"kind": "change", "percent": 3, "window_s": 600, "direction": "fall"},
        {"kind": "nodata", "for_s": 120, "device": "dev-*"},
    ):
        r = rule(**body)
        assert Rule.from_dict(r.to_dict()) == r
