"""GET /notifications: each user's delivery history, from the records a real notifier
retains on the broker, owner-scoped, filtered and paged; records that do not decode are
ignored."""

from __future__ import annotations

import pytest
from support import alert, wait_ready, wait_until
from test_alert_engine_service import client as mqtt_client
from test_api_users import bearer, make_user
from test_notifier_service import alert_engine_client, publish

from vigil.messages import Notification

pytestmark = pytest.mark.integration


def history(client, headers=None, query: str = ""):
    resp = client.get(f"/notifications{query}", headers=headers or {})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_each_user_sees_their_own_deliveries(
    client, cloud_config, broker, run_service, smtp_server
):
    anon = client.application.test_client()
    alice, bob = make_user(client, "alice"), make_user(client, "bob")
    put = anon.put(
        "/users/alice/recipients", json={"emails": ["alice@test.invalid"]}, headers=bearer(alice)
    )
    assert put.status_code == 200
    notifier = run_service("notifier", "--config", str(cloud_config.path))
    wait_ready(notifier, 20)
    wait_until(lambda: "recipients of rule set" in notifier.log_tail(), 10, what="recipients")
    ae = alert_engine_client(broker)
    try:
        publish(
            ae,
            alert(alert_id="a-1", rule_id="a-hot", rule="a-hot", owner="alice"),
            alert(alert_id="b-1", rule_id="b-hot", rule="b-hot", owner="bob", device="dev-2"),
            alert(alert_id="o-1", rule_id="o-hot", rule="o-hot"),
        )
        publish(ae, alert("resolved", alert_id="a-1", rule_id="a-hot", rule="a-hot", owner="alice"))
    finally:
        ae.stop()
    wait_until(lambda: history(client)["total"] >= 4, 20, what="four delivery records")
    wait_until(
        lambda: all(n["state"] != "pending" for n in history(client)["notifications"]),
        20,
        what="every delivery settled",
    )

    mine = history(anon, bearer(alice))
    assert mine["total"] == 2
    newest, oldest = mine["notifications"]
    assert [a["state"] for a in newest["alerts"]] == ["resolved"]
    assert oldest["alerts"][0]["alert_id"] == "a-1" and oldest["alerts"][0]["state"] == "firing"
    for n in mine["notifications"]:
        assert n["owner"] == "alice" and n["channel"] == "email" and n["state"] == "sent"
        assert n["target"] == "alice@test.invalid" and n["attempts"] == 1
        assert n["created_at"] <= n["updated_at"]
        assert "a-hot on dev-1" in n["alerts"][0]["summary"]

    bobs = history(anon, bearer(bob))
    assert bobs["total"] == 1
    (skipped,) = bobs["notifications"]
    assert skipped["state"] == "skipped" and skipped["reason"] == "user bob has no email recipients"

    # filters and pages; the admin sees everyone's and may pick an owner
    assert history(client, query="?owner=bob")["total"] == 1
    assert history(client, query="?state=skipped")["total"] == 1
    assert history(client, query="?rule_id=o-hot")["notifications"][0]["owner"] == "admin"
    assert history(client, query="?device=dev-2")["total"] == 1
    page = history(client, query="?limit=3")
    assert len(page["notifications"]) == 3 and page["next_offset"] == 3
    # alice cannot see bob's, by list or by id: the 404 of one that does not exist
    refused = anon.get("/notifications?owner=bob", headers=bearer(alice))
    assert refused.status_code == 404 and refused.mimetype == "application/problem+json"
    assert anon.get(f"/notifications/{skipped['id']}", headers=bearer(alice)).status_code == 404
    one = anon.get(f"/notifications/{skipped['id']}", headers=bearer(bob))
    assert one.status_code == 200 and one.get_json() == skipped
    bad = client.get("/notifications?state=lost")
    assert bad.status_code == 400 and "must be one of pending" in bad.get_json()["detail"]


def test_the_board_ignores_records_that_do_not_decode_or_match_their_topic(app, broker):
    board = app.extensions["vigil"].notifications
    good = Notification("n-1-1", "alice", "email", "a@x", "sent", 1, None, 1, 2, False, "", ())
    api = mqtt_client(broker, "vigil-notifier")
    try:
        api.publish_wait("vigil/notifications/alice/n-1-1", good.encode(), retain=True)
        api.publish_wait("vigil/notifications/bob/n-1-2", good.encode(), retain=True)
        api.publish_wait("vigil/notifications/bob/n-1-3", b"{not json", retain=True)
        wait_until(lambda: board.get("n-1-1") is not None, 10, what="the good record")
        assert board.get("n-1-2") is None and board.get("n-1-3") is None
        api.publish_wait("vigil/notifications/alice/n-1-1", b"", retain=True)
        wait_until(lambda: board.get("n-1-1") is None, 10, what="the record forgotten")
    finally:
        for topic in ("alice/n-1-1", "bob/n-1-2", "bob/n-1-3"):
            api.publish_wait(f"vigil/notifications/{topic}", b"", retain=True)
        api.stop()
