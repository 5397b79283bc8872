"""SLOs on the pipeline's own metrics: parsing definitions (total: any JSON gives an SLO or
InvalidSlo), the indicator over a window from scrapes (pure), and the runner against real
``/metrics`` endpoints served by prometheus_client, with its violations stored."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.db import Store
from api.slo import InvalidSlo, Slo, evaluate, parse_slo
from api.slo_runner import SloRunner
from stack.process import free_port
from vigil.metrics import ServiceMetrics
from vigil.metrics import parse_exposition as parse

LAG = {"id": "fresh", "kind": "ingest_lag", "target": 0.9, "threshold_s": 1.0, "window_s": 60}


def test_a_definition_is_parsed_with_its_defaults():
    slo = parse_slo({"id": "mail", "kind": "delivery_success", "target": 0.99})
    assert slo == Slo("mail", "delivery_success", 0.99, 300.0, None, "")
    assert parse_slo(slo.to_dict()) == slo
    assert parse_slo(LAG).threshold_s == 1.0


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ([], "must be a JSON object"),
        ({**LAG, "colour": 1}, "unknown field 'colour'"),
        ({**LAG, "id": "a b"}, "id:"),
        ({**LAG, "kind": "uptime"}, "kind: must be one of"),
        ({**LAG, "target": 0}, "target:"),
        ({**LAG, "target": 1.5}, "target:"),
        ({**LAG, "target": True}, "target: must be a number"),
        ({**LAG, "target": float("nan")}, "target: must be a number"),
        ({**LAG, "window_s": 1}, "window_s: from 10 s"),
        ({**LAG, "threshold_s": 0.7}, "threshold_s: one of"),
        ({**LAG, "threshold_s": None}, "threshold_s: one of"),
        ({"id": "m", "kind": "delivery_success", "target": 0.9, "threshold_s": 1},
         "does not apply"),
        ({**LAG, "description": 5}, "description:"),
    ],
)  # fmt: skip
def test_an_invalid_definition_says_what_is_wrong(body, detail):
    with pytest.raises(InvalidSlo, match=detail.replace("(", r"\(")):
        parse_slo(body)


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from([*LAG, "description", "x"]), JSON) | JSON)
def test_parsing_is_total(obj):
    try:
        slo = parse_slo(obj)
    except InvalidSlo as exc:
        assert str(exc)
    else:
        assert parse_slo(json.loads(json.dumps(slo.to_dict()))) == slo


def lag_samples(target: str, good: float, total: float) -> dict:
    """What the runner keeps of one ingest process: its bucket at 1 s and its count."""
    t = ("_target", target)
    return {
        ("vigil_ingest_lag_seconds_bucket", frozenset({("le", "1.0"), t})): good,
        ("vigil_ingest_lag_seconds_bucket", frozenset({("le", "5.0"), t})): total,
        ("vigil_ingest_lag_seconds_count", frozenset({t})): total,
    }


def test_the_indicator_is_the_growth_over_the_window_summed_over_processes():
    slo = parse_slo(LAG)  # 90% within 1 s over 60 s
    a, b = "http://a/metrics", "http://b/metrics"
    history = [
        (0.0, {**lag_samples(a, 100, 100), **lag_samples(b, 0, 0)}),
        (30.0, {**lag_samples(a, 150, 160), **lag_samples(b, 10, 10)}),
        (60.0, {**lag_samples(a, 190, 200), **lag_samples(b, 20, 20)}),
    ]
    # from t=0 to t=60: a 90 of 100, b 20 of 20
    r = evaluate(slo, history, 60.0)
    assert (r.good, r.total, r.state) == (110, 120, "met") and r.sli == pytest.approx(110 / 120)
    # from t=30 (the newest at least 60 s before 90): a 40 of 40... b restarted at 9 of 9
    later = [*history, (90.0, {**lag_samples(a, 190, 260), **lag_samples(b, 9, 9)})]
    r = evaluate(slo, later, 90.0)
    assert (r.good, r.total) == (40 + 9, 100 + 9) and r.state == "violated"


def test_no_event_or_a_single_scrape_is_no_data():
    slo = parse_slo(LAG)
    a = "http://a/metrics"
    assert evaluate(slo, [], 0).state == "no_data"
    assert evaluate(slo, [(0.0, lag_samples(a, 5, 5))], 0).state == "no_data"
    flat = [(0.0, lag_samples(a, 5, 5)), (60.0, lag_samples(a, 5, 5))]
    assert evaluate(slo, flat, 60.0) == evaluate(slo, [], 0)


def test_delivery_success_counts_delivered_against_failed_for_good():
    slo = parse_slo({"id": "mail", "kind": "delivery_success", "target": 0.75, "window_s": 60})
    t = ("_target", "n")

    def notifier(sent: float, failed: float) -> dict:
        return {
            ("vigil_messages_out_total", frozenset({("service", "notifier"), t})): sent,
            ("vigil_notifications_failed_total", frozenset({("service", "notifier"), t})): failed,
        }

    r = evaluate(slo, [(0.0, notifier(0, 0)), (60.0, notifier(3, 1))], 60.0)
    assert (r.good, r.total, r.sli, r.state) == (3, 4, 0.75, "met")


def test_the_runner_scrapes_real_endpoints_and_stores_each_violation(tmp_path):
    metrics = ServiceMetrics("ingest_service", "store batch")
    lag = metrics.histogram("vigil_ingest_lag_seconds", "lag")
    port = free_port()
    metrics.serve(port)
    down = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
    store = Store.open(tmp_path / "api.sqlite3")
    store.init_schema()
    assert store.put_slo(parse_slo(LAG))
    store.close()
    runner = SloRunner(
        tmp_path / "api.sqlite3",
        {"ingest": [f"http://127.0.0.1:{port}/metrics", down]},
        interval_s=0,  # stepped by the test
    )
    slo = parse_slo(LAG)

    def view() -> dict:
        s = Store.open(tmp_path / "api.sqlite3")
        try:
            row = s.get_slo("fresh")
            assert row is not None
            return runner.view(*row)
        finally:
            s.close()

    runner.step(1000.0)
    assert view()["state"] == "no_data"
    assert [e.split(":")[0] for e in view()["errors"]] == ["http"]  # the one that is down
    for _ in range(9):
        lag.observe(0.2)
    lag.observe(3.0)
    runner.step(1060.0)
    v = view()
    assert (v["state"], v["good"], v["total"], v["sli"]) == ("met", 9, 10, 0.9)
    assert v["violations"] == 0 and v["since"] == 1_060_000
    for _ in range(5):
        lag.observe(4.0)
    runner.step(1120.0)  # 0 of 5 within 1 s in the last minute
    v = view()
    assert (v["state"], v["sli"], v["violations"]) == ("violated", 0.0, 1)
    assert v["last_violation_at"] == 1_120_000
    runner.step(1180.0)  # nothing happened since: no data, and no second violation
    for _ in range(5):
        lag.observe(4.0)
    runner.step(1240.0)  # violated again: a second one
    v = view()
    assert (v["state"], v["violations"]) == ("violated", 2)
    assert slo.to_dict().items() <= v.items()


def test_parse_reads_the_exposition_format():
    text = (
        "# TYPE vigil_ingest_lag_seconds histogram\n"
        'vigil_ingest_lag_seconds_bucket{le="1.0",service="ingest_service"} 3.0\n'
        'vigil_ingest_lag_seconds_count{service="ingest_service"} 4.0\n'
    )
    assert parse(text) == {
        (
            "vigil_ingest_lag_seconds_bucket",
            frozenset({("le", "1.0"), ("service", "ingest_service")}),
        ): 3.0,
        ("vigil_ingest_lag_seconds_count", frozenset({("service", "ingest_service")})): 4.0,
    }
