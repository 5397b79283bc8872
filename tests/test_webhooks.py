"""Webhooks: set through the API (validated, secrets shown once, owner-scoped, kept from the
viewer), and a real notifier POSTing signed notifications to a local receiver: retried
through an outage, failed at once on a 4xx, given up after max_attempts."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import alert, wait_ready, wait_until
from test_api_users import bearer, make_user
from test_notifier_service import alert_engine_client, publish

from notifier.store import SentStore
from notifier.webhook import private_address, sign
from vigil.messages import decode_channels

pytestmark = pytest.mark.integration

SECRET = "s3cret-s3cret-s3cret"


class Receiver:
    """An HTTP server on 127.0.0.1 answering each POST with the next status of ``answers``
    (then 200), recording (path, headers, body)."""

    def __init__(self, answers: dict[str, list[int]] | None = None) -> None:
        self.answers = answers or {}
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((self.path, dict(self.headers), body))
                queue = receiver.answers.get(self.path, [])
                status = queue.pop(0) if queue else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"nope" if status >= 400 else b"ok")

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for p, h, b in self.requests if p == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver({"/flaky": [503, 500], "/bad": [400], "/down": [503, 503, 503, 503]})
    yield r
    r.stop()


def test_webhooks_are_validated_owned_and_their_secrets_shown_once(client, broker, probe):
    anon = client.application.test_client()
    bob, alice = make_user(client, "bob"), make_user(client, "alice")
    resp = anon.put(
        "/users/bob/webhooks",
        json={"webhooks": [{"name": "ops", "url": "https://hooks.example.org/x"}]},
        headers=bearer(bob),
    )
    assert resp.status_code == 200, resp.get_json()
    assert resp.headers["Cache-Control"] == "no-store"
    (made,) = resp.get_json()["webhooks"]
    assert len(made["secret"]) >= 32 and resp.get_json()["pushed"] is True
    listed = anon.get("/users/bob/webhooks", headers=bearer(bob)).get_json()["webhooks"]
    assert listed == [{"name": "ops", "url": "https://hooks.example.org/x",
                       "created_at": made["created_at"]}]  # fmt: skip
    # a PUT without the secret keeps it (and does not show it again)
    again = anon.put(
        "/users/bob/webhooks",
        json={"webhooks": [{"name": "ops", "url": "https://hooks.example.org/y"}]},
        headers=bearer(bob),
    ).get_json()
    assert "secret" not in again["webhooks"][0]
    snap = client.application.extensions["vigil"].publisher._read_snapshot()
    assert snap.webhooks["bob"][0].secret == made["secret"]
    # alice cannot see or set bob's: the 404 of a user that does not exist
    assert anon.get("/users/bob/webhooks", headers=bearer(alice)).status_code == 404
    assert (
        anon.put("/users/bob/webhooks", json={"webhooks": []}, headers=bearer(alice)).status_code
        == 404
    )
    # the viewer credential reads everything but the signing secrets
    watcher = probe("vigil/#")
    wait_until(lambda: watcher.on("vigil/config/rules"), 10, what="the viewer's retained rules")
    assert not watcher.on("vigil/config/channels")


@pytest.mark.parametrize(
    ("hooks", "detail"),
    [
        ([{"name": "a", "url": "ftp://x"}], "is not an http:// or https:// URL"),
        ([{"name": "a", "url": "http://"}], "is not an http:// or https:// URL"),
        ([{"name": "a b", "url": "http://x"}], "name 'a b' is not a valid name"),
        ([{"name": "a", "url": "http://x", "secret": "short"}], "at least 16 characters"),
        ([{"name": "a", "url": "http://x", "colour": 1}], "webhooks[0].colour: unknown key"),
        ([{"name": "a", "url": "http://x"}] * 2, "name 'a' is given twice"),
        ([{"name": f"h{i}", "url": "http://x"} for i in range(11)], "at most 10"),
        ("http://x", "webhooks: Input should be a valid list, not a string"),
    ],
)
def test_bad_webhooks_get_a_precise_problem(client, hooks, detail):
    resp = client.put("/users/admin/webhooks", json={"webhooks": hooks})
    assert resp.status_code == 400 and resp.mimetype == "application/problem+json"
    assert detail in resp.get_json()["detail"], resp.get_json()


def test_notifications_are_posted_signed_retried_and_failed_for_good(
    client, cloud_config, broker, run_service, receiver
):
    anon = client.application.test_client()
    bob = make_user(client, "bob")
    hooks = [
        {"name": name, "url": f"{receiver.url}/{name}", "secret": SECRET}
        for name in ("flaky", "bad", "down")
    ]
    resp = anon.put("/users/bob/webhooks", json={"webhooks": hooks}, headers=bearer(bob))
    assert resp.status_code == 200 and resp.get_json()["pushed"]
    notifier = run_service("notifier", "--config", str(cloud_config.path))
    wait_ready(notifier, 20)
    wait_until(lambda: "3 webhook(s)" in notifier.log_tail(), 10, what="the channel set")
    ae = alert_engine_client(broker)
    try:
        publish(ae, alert(alert_id="w-1", rule_id="b-hot", rule="b-hot", owner="bob"))
    finally:
        ae.stop()
    wait_until(lambda: len(receiver.on("/flaky")) >= 3, 30, what="the flaky one, third try")
    wait_until(lambda: len(receiver.on("/down")) >= 3, 30, what="the down one, given up")
    headers, body = receiver.on("/flaky")[-1]
    first_headers, first_body = receiver.on("/flaky")[0]
    assert body == first_body and headers["X-Vigil-Delivery"] == first_headers["X-Vigil-Delivery"]
    expected = hmac.new(
        SECRET.encode(), f"{headers['X-Vigil-Timestamp']}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert headers["X-Vigil-Signature"] == f"sha256={expected}"
    assert headers["X-Vigil-Signature"] == sign(SECRET, int(headers["X-Vigil-Timestamp"]), body)
    sent = json.loads(body)
    assert sent["owner"] == "bob" and sent["webhook"] == "flaky" and not sent["repeat"]
    assert [(a["alert_id"], a["state"]) for a in sent["alerts"]] == [("w-1", "firing")]
    assert len(receiver.on("/bad")) == 1  # a 4xx is not retried

    def states():
        store = SentStore(cloud_config.config.notifier.state_path)
        try:
            return {
                n.target.split(" ")[0]: (n.state, n.attempts, n.reason)
                for n in store.notifications()
                if n.channel == "webhook"
            }
        finally:
            store.close()

    wait_until(lambda: "pending" not in {s for s, _, _ in states().values()}, 20, what="settled")
    got = states()
    assert got["flaky"] == ("sent", 3, None)
    assert got["bad"][0:2] == ("failed", 1) and "answered 400" in got["bad"][2]
    assert got["down"][0:2] == ("failed", 3) and got["down"][2].startswith("gave up after 3")
    # bob has no email address: that one is skipped, the webhooks are not held up by it
    history = client.get("/notifications?owner=bob")
    wait_until(
        lambda: client.get("/notifications?owner=bob").get_json()["total"] == 4,
        10,
        what="four delivery records",
    )
    assert history.status_code == 200
    channels = {
        n["channel"] for n in client.get("/notifications?owner=bob").get_json()["notifications"]
    }
    assert channels == {"email", "webhook"}


def test_private_addresses_are_told_apart():
    assert private_address("127.0.0.1") == "127.0.0.1"
    assert private_address("10.1.2.3") == "10.1.2.3"
    assert private_address("169.254.169.254") == "169.254.169.254"
    assert private_address("8.8.8.8") is None
    assert private_address("no-such-host.invalid") is None


def test_a_channel_set_round_trips_and_refuses_bad_entries():
    from vigil.messages import InvalidMessage, Webhook, encode_channels

    hook = Webhook("ops", "https://h.example.org/x", SECRET)
    assert decode_channels(encode_channels(7, {"bob": [hook]})).webhooks == {"bob": (hook,)}
    bad = json.dumps({"version": 1, "webhooks": {"bob": [{"name": "x", "url": "h"}]}})
    with pytest.raises(InvalidMessage, match="secret must be a string"):
        decode_channels(bad.encode())
