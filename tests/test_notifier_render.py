"""Alert -> email, rendered from the Jinja2 templates, checked without any server."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from support import alert

from notifier.render import fmt_duration, fmt_number, render_email, subject


def parts(msg):
    """(text, html) of a sent-and-parsed message."""
    parsed = message_from_bytes(msg.as_bytes(), policy=default_policy)
    return (parsed.get_body(("plain",)).get_content(), parsed.get_body(("html",)).get_content())


def test_subject_names_state_severity_rule_device_metric_value_and_threshold():
    assert subject(alert()) == "[FIRING critical] high-temp on dev-1: temperature 31.2 above 30"
    assert subject(alert("resolved", value=29.5)) == (
        "[RESOLVED critical] high-temp on dev-1: temperature 29.5 no longer above 30"
    )


def test_the_email_has_a_text_and_an_html_part_with_the_facts():
    msg = render_email(
        alert(rule="Lab too hot"),
        sender="vigil@example.org",
        recipients=["ops@example.org", "oncall@example.org"],
    )
    assert msg["From"] == "vigil@example.org"
    assert msg["To"] == "ops@example.org, oncall@example.org"
    assert msg["Message-ID"] == "<a1b2c3.firing@example.org>"
    assert msg["X-Vigil-Alert-Id"] == "a1b2c3"
    text, html = parts(msg)
    for body in (text, html):
        for fact in (
            "Lab too hot",
            "high-temp",
            "dev-1",
            "temperature",
            "31.2",
            "above 30",
            "critical",
            "a1b2c3",
            "2024-11-22 18:26:40 UTC",
        ):
            assert fact in body, (fact, body)
    assert "<table" in html and "<table" not in text


def test_a_resolved_email_says_when_and_after_how_long():
    text, html = parts(
        render_email(alert("resolved", value=29.5), sender="v@x.org", recipients=["a@x.org"])
    )
    for body in (text, html):
        assert "29.5" in body and "2024-11-22 18:28:45 UTC" in body and "2m 5s" in body


def test_an_alert_resolved_by_its_rule_going_away_says_so():
    gone = alert("resolved", value=34.0, reason="rule deleted", reading_id=None)
    assert subject(gone) == "[RESOLVED critical] high-temp on dev-1: rule deleted"
    text, html = parts(render_email(gone, sender="v@x.org", recipients=["a@x.org"]))
    for body in (text, html):
        assert "rule deleted" in body and "2m 5s" in body and "back inside" not in body


def test_html_is_escaped_and_headers_cannot_be_injected():
    evil = alert(rule="<script>alert(1)</script>\r\nBcc: x@evil.example", device="dev-1")
    msg = render_email(evil, sender="v@x.org", recipients=["a@x.org"])
    assert "\n" not in msg["Subject"] and msg["Bcc"] is None
    text, html = parts(msg)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<script>" in text  # plain text is not HTML: shown as is


@pytest.mark.parametrize(
    ("value", "shown"),
    [(30.0, "30"), (31.2, "31.2"), (-0.5, "-0.5"), (1234567.25, "1234567.25"), (1e20, "1e+20")],
)
def test_numbers_are_shown_exactly_and_briefly(value, shown):
    assert fmt_number(value) == shown


@pytest.mark.parametrize(
    ("ms", "shown"),
    [(250, "250ms"), (5_000, "5s"), (125_000, "2m 5s"), (90_061_000, "1d 1h 1m 1s")],
)
def test_durations(ms, shown):
    assert fmt_duration(ms) == shown


def test_other_kinds_say_what_happened_in_their_own_words():
    change = alert(
        kind="change",
        op="rise",
        threshold=2.0,
        rule="aapl-jump",
        detail="price of AAPL on dev-9 rose 2.10% in 300 s (100 -> 102.1)",
    )
    assert subject(change) == (
        "[FIRING critical] aapl-jump: price of AAPL on dev-9 rose 2.10% in 300 s (100 -> 102.1)"
    )
    text, html = parts(render_email(change, sender="v@example.org", recipients=["a@b.org"]))
    assert "Condition: rise by 2%" in text and "rose 2.10% in 300 s" in text
    assert "rise by 2%" in html
    silent = alert(
        kind="nodata", op="nodata", threshold=60.0, detail="no temperature from dev-1 for 60 s"
    )
    assert (
        "Condition: no data for 60 s"
        in parts(render_email(silent, sender="v@example.org", recipients=["a@b.org"]))[0]
    )


def test_a_group_email_lists_each_transition_and_what_still_fires():
    from notifier.render import render_notification

    fired = alert(alert_id="g-1")
    other = alert(alert_id="g-2", device="dev-2")
    gone = alert("resolved", alert_id="g-3", device="dev-3", value=29.0)
    msg = render_notification(
        [fired, gone],
        firing=[other],
        notification_id="n7.123",
        sender="vigil@example.org",
        recipients=["a@example.org"],
    )
    assert msg["Subject"] == "[FIRING:1 RESOLVED:1] high-temp on 2 devices"
    assert msg["Message-ID"] == "<n7.123@example.org>"
    assert msg["X-Vigil-Alert-Id"] == "g-1, g-3"
    assert msg["X-Vigil-State"] == "firing, resolved"
    text, html = parts(msg)
    for body in (text, html):
        assert "high-temp on dev-1" in body and "high-temp on dev-3" in body
        assert "g-1" in body and "g-3" in body
        assert "Still firing" in body and "high-temp on dev-2" in body
    # a lone transition keeps its own email
    lone = render_notification(
        [fired], notification_id="n8.1", sender="vigil@example.org", recipients=["a@x.org"]
    )
    assert lone["Message-ID"] == "<g-1.firing@example.org>"
    repeat = render_notification(
        [fired], repeat=True, notification_id="n9.1", sender="v@x.org", recipients=["a@x.org"]
    )
    assert repeat["Subject"] == "[STILL FIRING:1] high-temp on dev-1"
