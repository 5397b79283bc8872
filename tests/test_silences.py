"""Silences through the API (owners, validation, expiry) and what they and an offline
device do to a real notifier: muted alerts are recorded as suppressed, not emailed, and a
still-firing alert is emailed once the silence is expired or the device is back."""

from __future__ import annotations

import json

import pytest
from support import alert, parsed, scrape, wait_ready, wait_until
from test_alert_engine_service import client as mqtt_client
from test_api_users import bearer, make_user
from test_notifier_service import alert_engine_client, publish

from notifier.store import SentStore
from vigil.messages import DeviceStatus, Silence, decode_rule_set, now_ms

pytestmark = pytest.mark.integration


def silence(client, headers=None, **body):
    return client.post("/silences", json=body, headers=headers or {})


def test_silences_are_created_listed_and_expired_by_their_owner_only(client):
    anon = client.application.test_client()
    alice, bob = make_user(client, "alice"), make_user(client, "bob")
    resp = silence(
        anon,
        bearer(alice),
        matchers={"device": "dev-*", "rule_id": "hot"},
        duration_s=3600,
        comment="maintenance",
    )
    assert resp.status_code == 201, resp.get_json()
    made = resp.get_json()
    assert made["owner"] == "alice" and made["state"] == "active"
    assert made["ends_at"] - made["starts_at"] == 3_600_000 and made["pushed"] is True
    assert resp.headers["Location"] == f"/silences/{made['id']}"
    later = silence(
        anon, bearer(alice), matchers={"severity": "info"}, starts_at=now_ms() + 60_000,
        duration_s=60,
    ).get_json()  # fmt: skip
    assert later["state"] == "pending"

    # bob sees none of alice's, and cannot expire them: the 404 of a silence that does not exist
    assert anon.get("/silences", headers=bearer(bob)).get_json()["total"] == 0
    for method in (anon.get, anon.delete):
        resp = method(f"/silences/{made['id']}", headers=bearer(bob))
        assert resp.status_code == 404
        assert resp.mimetype == "application/problem+json"
    listed = anon.get("/silences?state=active", headers=bearer(alice)).get_json()
    assert [s["id"] for s in listed["silences"]] == [made["id"]]
    assert client.get("/silences").get_json()["total"] == 2  # the admin sees all

    # the snapshot the notifier follows carries both, with their owner
    snap = client.application.extensions["vigil"].publisher._read_snapshot()
    assert {(s.id, s.owner) for s in snap.silences} == {
        (made["id"], "alice"),
        (later["id"], "alice"),
    }

    gone = anon.delete(f"/silences/{made['id']}", headers=bearer(alice))
    assert gone.status_code == 200 and gone.get_json()["state"] == "expired"
    assert anon.get(f"/silences/{made['id']}", headers=bearer(alice)).get_json()["state"] == (
        "expired"
    )
    snap = client.application.extensions["vigil"].publisher._read_snapshot()
    assert [s.id for s in snap.silences] == [later["id"]]  # the expired one is not pushed


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"duration_s": 60}, "matchers: required key is missing"),
        ({"matchers": {}, "duration_s": 60}, "matchers must be a non-empty object"),
        ({"matchers": {"colour": "red"}, "duration_s": 60}, "'colour' is not a label"),
        ({"matchers": {"device": ""}, "duration_s": 60}, "must be a non-empty pattern"),
        ({"matchers": {"device": "a\nb"}, "duration_s": 60}, "control characters"),
        ({"matchers": {"device": "d"}}, "exactly one of duration_s"),
        ({"matchers": {"device": "d"}, "duration_s": 60, "ends_at": 1}, "exactly one of"),
        ({"matchers": {"device": "d"}, "duration_s": -1}, "duration_s: must be more than 0"),
        (
            {"matchers": {"device": "d"}, "duration_s": "1h"},
            "duration_s: Input should be a valid number",
        ),
        ({"matchers": {"device": "d"}, "ends_at": 5}, "must be after starts_at and in the"),
        ({"matchers": {"device": "d"}, "duration_s": 9e9}, "at most 31622400"),
        ({"matchers": {"device": "d"}, "duration_s": 1, "who": 1}, "unknown field 'who'"),
        (
            {"matchers": {"device": "d"}, "duration_s": 1, "comment": 7},
            "comment: Input should be a valid string",
        ),
    ],
)
def test_a_bad_silence_gets_a_precise_problem(client, body, detail):
    resp = client.post("/silences", json=body)
    assert resp.status_code == 400 and resp.mimetype == "application/problem+json"
    assert detail in resp.get_json()["detail"], resp.get_json()


def test_bad_silence_queries_and_ids(client):
    assert client.get("/silences?state=loud").status_code == 400
    assert client.get("/silences/s-0000").status_code == 404
    assert client.get("/silences?colour=1").status_code == 400


def test_silenced_and_offline_alerts_are_suppressed_then_sent_once_unmuted(
    client, cloud_config, broker, run_service, smtp_server
):
    config = str(cloud_config.path)
    made = silence(client, matchers={"device": "dev-2"}, duration_s=600, comment="swap")
    assert made.status_code == 201
    sid = made.get_json()["id"]
    dev3 = mqtt_client(broker, "dev-3")
    try:
        offline = DeviceStatus("dev-3", "offline", now_ms(), "lost").encode()
        dev3.publish_wait("vigil/status/dev-3", offline, retain=True)
        notifier = run_service("notifier", "--config", config)
        wait_ready(notifier, 20)
        wait_until(lambda: "device dev-3 is offline" in notifier.log_tail(), 10, what="status")
        wait_until(lambda: "recipients of rule set" in notifier.log_tail(), 10, what="rules")
        ae = alert_engine_client(broker)
        try:
            publish(
                ae,
                alert(alert_id="s-1", rule_id="r1", rule="r1"),
                alert(alert_id="s-2", rule_id="r2", rule="r2", device="dev-2"),
                alert(alert_id="s-3", rule_id="r3", rule="r3", device="dev-3"),
                alert(alert_id="s-4", rule_id="r4", rule="r4", device="dev-3", kind="offline"),
            )
            mail = smtp_server.sink.messages
            wait_until(lambda: len(mail) >= 2, 15, what="the unmuted alerts' emails")
            metrics = cloud_config.config.notifier.metrics_port
            wait_until(
                lambda: scrape(metrics, "vigil_notifications_suppressed_total") == 2,
                10,
                what="two suppressed",
            )
            # the offline alert itself is not inhibited
            assert sorted(str(parsed(m)["X-Vigil-Alert-Id"]) for m in mail) == ["s-1", "s-4"]

            assert client.delete(f"/silences/{sid}").status_code == 200
            wait_until(lambda: len(mail) >= 3, 15, what="s-2 once its silence expired")
            online = DeviceStatus("dev-3", "online", now_ms()).encode()
            dev3.publish_wait("vigil/status/dev-3", online, retain=True)
            wait_until(lambda: len(mail) >= 4, 15, what="s-3 once dev-3 is back")
            ids = [str(parsed(m)["X-Vigil-Alert-Id"]) for m in mail]
            assert sorted(ids) == ["s-1", "s-2", "s-3", "s-4"]
        finally:
            ae.stop()
        notifier.stop()
    finally:
        dev3.publish_wait("vigil/status/dev-3", b"", retain=True)
        dev3.stop()
    store = SentStore(cloud_config.config.notifier.state_path)
    try:
        reasons = {
            (a.alert_id, n.state, n.channel) for n in store.notifications() for a in n.alerts
        }
        assert ("s-2", "sent", "email") in reasons and ("s-3", "sent", "email") in reasons
    finally:
        store.close()


def test_a_silence_in_the_snapshot_round_trips_and_bad_ones_are_refused():
    s = Silence("s-abcd", "alice", {"device": "dev-?"}, 10, 20, "x", 5)
    from vigil.messages import encode_rules

    back = decode_rule_set(encode_rules([], 1, 1, {}, [s]))
    assert back.silences == (s,)
    assert s.matches(alert(device="dev-1")) and not s.matches(alert(device="dev-10"))
    assert s.applies_to("alice") and not s.applies_to("bob")
    assert Silence("s-abcd", "admin", {"kind": "*"}, 0, 1).applies_to("bob")
    assert [s.state(t) for t in (9, 10, 19, 20)] == ["pending", "active", "active", "expired"]
    bad = json.dumps({"version": 1, "rules": [], "silences": [{"id": "x"}]}).encode()
    with pytest.raises(Exception, match=r"silences\[0\] id 'x' is not a silence id"):
        decode_rule_set(bad)
