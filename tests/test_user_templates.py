"""Users' own email templates: sandboxed and bounded (pure), set through the API with a
precise problem, and used by a real notifier for that user's emails only."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import alert, parsed, wait_ready, wait_until
from test_api_users import bearer, make_user
from test_notifier_service import alert_engine_client, publish

from notifier.render import render_notification, with_user_templates
from vigil.usertemplates import SAMPLE, TemplateProblem, check_templates, render


@pytest.mark.parametrize(
    ("templates", "reason"),
    [
        ({"subject": "{% if %}"}, "subject: line 1:"),
        ({"text": "a\n{{ alerts[0].summary }\n"}, "text: line 2:"),
        ({"text": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"}, "macro is not allowed"),
        ({"text": "{% include 'x' %}"}, "include is not allowed"),
        ({"text": "{% for i in range(9) %}{% endfor %}"}, "'range' is undefined"),
        (
            {
                "text": "{% for a in alerts %}{% for b in alerts %}{% for c in alerts %}"
                "{% endfor %}{% endfor %}{% endfor %}"
            },
            "loops nested deeper than 2",
        ),
        ({"text": "{{ 'x' * 100000 }}"}, "longer than 10000"),
        ({"text": "{{ 9 ** 9999 }}"}, "exponent over 64"),
        ({"text": "{{ owner.__class__ }}"}, "text:"),
        ({"text": "{{ nothing }}"}, "'nothing' is undefined"),
        ({"subject": "   "}, "non-empty template text"),
        ({"colour": "red"}, "'colour' is not a template"),
        ({"text": 7}, "non-empty template text"),
    ],
)
def test_a_template_that_could_fail_or_stall_is_refused_with_the_reason(templates, reason):
    with pytest.raises(TemplateProblem, match=None) as info:
        check_templates(templates)
    assert reason in str(info.value), str(info.value)


def test_templates_render_from_the_notification_and_html_is_escaped():
    assert render("subject", "{{ owner }}:\n {{ alerts|length }} alert(s)", SAMPLE) == (
        "alice: 1 alert(s)"
    )
    hostile = alert(rule="<script>x</script>")
    msg = render_notification(
        [hostile], notification_id="n-1-1", sender="v@x.org", recipients=["a@x.org"]
    )
    out, problem = with_user_templates(
        msg,
        {"subject": "{{ owner }} / {{ alerts[0].rule }}", "html": "<p>{{ alerts[0].rule }}</p>"},
        alerts=[hostile],
        firing=[],
        repeat=False,
        owner="alice",
    )
    assert problem is None
    assert out["Subject"] == "alice / <script>x</script>"  # a header: plain text
    assert "&lt;script&gt;" in out.get_body(("html",)).get_content()
    assert out.get_body(("plain",)).get_content() == msg.get_body(("plain",)).get_content()
    assert out["Message-ID"] == msg["Message-ID"] and out["To"] == "a@x.org"
    # one failing at render time leaves Vigil's email as it was, with the reason
    same, problem = with_user_templates(
        msg, {"text": "{{ alerts[5].rule }}"}, alerts=[hostile], firing=[], repeat=False,
        owner="alice",
    )  # fmt: skip
    assert same is msg and problem is not None and problem.startswith("text:")


@pytest.mark.integration
def test_a_users_templates_shape_their_emails_only(
    client, cloud_config, broker, run_service, smtp_server
):
    anon = client.application.test_client()
    alice, bob = make_user(client, "alice"), make_user(client, "bob")
    for name, token in (("alice", alice), ("bob", bob)):
        resp = anon.put(
            f"/users/{name}/recipients", json={"emails": [f"{name}@test.invalid"]},
            headers=bearer(token),
        )  # fmt: skip
        assert resp.status_code == 200
    bad = anon.put("/users/alice/templates", json={"text": "{% for %}"}, headers=bearer(alice))
    assert bad.status_code == 400 and bad.get_json()["detail"].startswith("text: line 1:")
    assert anon.put("/users/alice/templates", json={}, headers=bearer(bob)).status_code == 404
    body = {
        "subject": "Vigil for {{ owner }}: {{ alerts|length }} change(s)",
        "text": "Hello {{ owner }}\n{% for a in alerts %}* {{ a.summary }}\n{% endfor %}",
    }
    resp = anon.put("/users/alice/templates", json=body, headers=bearer(alice))
    assert resp.status_code == 200 and resp.get_json()["pushed"], resp.get_json()
    assert anon.get("/users/alice/templates", headers=bearer(alice)).get_json()["templates"] == body

    notifier = run_service("notifier", "--config", str(cloud_config.path))
    wait_ready(notifier, 20)
    wait_until(lambda: "Telegram chat(s)" in notifier.log_tail(), 10, what="the channel set")
    ae = alert_engine_client(broker)
    try:
        publish(
            ae,
            alert(alert_id="u-a", rule_id="a-hot", rule="a-hot", owner="alice"),
            alert(alert_id="u-b", rule_id="b-hot", rule="b-hot", owner="bob"),
        )
    finally:
        ae.stop()
    mail = smtp_server.sink.messages
    wait_until(lambda: len(mail) >= 2, 20, what="both emails")
    by_to = {str(parsed(m)["To"]): parsed(m) for m in mail}
    mine = by_to["alice@test.invalid"]
    assert mine["Subject"] == "Vigil for alice: 1 change(s)"
    assert mine.get_body(("plain",)).get_content() == (
        "Hello alice\n* a-hot on dev-1: temperature 31.2 above 30\n"
    )
    assert "a-hot" in mine.get_body(("html",)).get_content()  # Vigil's HTML part
    assert by_to["bob@test.invalid"]["Subject"].startswith("[FIRING critical] b-hot on dev-1")


template_text = st.text(max_size=80) | st.lists(
    st.sampled_from(["{{", "}}", "{%", "%}", " for a in alerts ", " endfor ", " if ", " endif ",
                     "owner", "alerts", "|length", " * ", "'x'", "99", ".__class__", "x"]),
    max_size=12,
).map("".join)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["subject", "text", "html"]), template_text)
def test_checking_a_template_is_total(key, source):
    try:
        check_templates({key: source})
    except TemplateProblem as exc:
        assert str(exc).startswith(key) or "template" in str(exc)
