"""Telegram: a user's chat set through the API, and a real notifier sending each
notification with the Bot API's sendMessage to a local stand-in (notifier.telegram.base_url):
delivered, refused for good (chat not found), retried through a 502."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import alert, wait_ready, wait_until
from test_api_users import bearer, make_user
from test_notifier_service import alert_engine_client, publish

from notifier.store import SentStore

pytestmark = pytest.mark.integration

TOKEN = "123456:test-bot-token"


class FakeBotApi:
    """Answers sendMessage like the Bot API: ok for chat 111, "chat not found" for 222,
    a 502 first and then ok for 333."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.flaky = [502]
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.messages.append((self.path, body))
                chat = str(body.get("chat_id"))
                if self.path != f"/bot{TOKEN}/sendMessage":
                    status, answer = (
                        401,
                        {"ok": False, "error_code": 401, "description": "Unauthorized"},
                    )
                elif chat == "222":
                    status, answer = (
                        400,
                        {
                            "ok": False,
                            "error_code": 400,
                            "description": "Bad Request: chat not found",
                        },
                    )
                elif chat == "333" and api.flaky:
                    status, answer = api.flaky.pop(), {"ok": False, "description": "Bad Gateway"}
                else:
                    status, answer = 200, {"ok": True, "result": {"message_id": len(api.messages)}}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, chat: str) -> list[dict]:
        return [b for _, b in self.messages if str(b.get("chat_id")) == chat]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_chats_are_validated_and_owned(client):
    anon = client.application.test_client()
    carol, dave = make_user(client, "carol"), make_user(client, "dave")
    resp = anon.put("/users/carol/telegram", json={"chat_id": -100123}, headers=bearer(carol))
    assert resp.status_code == 200 and resp.get_json()["chat_id"] == "-100123"
    assert (
        anon.get("/users/carol/telegram", headers=bearer(carol)).get_json()["chat_id"] == "-100123"
    )
    assert anon.get("/users/carol/telegram", headers=bearer(dave)).status_code == 404
    for bad, detail in (
        ({"chat_id": "chat 1"}, "is not a Telegram chat id"),
        ({"chat_id": True}, "chat_id: Input should be a valid integer or a valid string"),
        ({}, "chat_id: required"),
        ({"chat_id": 1, "x": 2}, "unknown field 'x'"),
    ):
        resp = anon.put("/users/carol/telegram", json=bad, headers=bearer(carol))
        assert resp.status_code == 400 and detail in resp.get_json()["detail"], resp.get_json()
    assert (
        anon.put("/users/carol/telegram", json={"chat_id": None}, headers=bearer(carol)).get_json()[
            "chat_id"
        ]
        is None
    )


def test_notifications_reach_each_users_chat(client, cloud_config, broker, run_service, tmp_path):
    bot = FakeBotApi()
    token_file = tmp_path / "bot.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    users = {name: make_user(client, name) for name in ("carol", "dave", "erin")}
    anon = client.application.test_client()
    for name, chat in (("carol", "111"), ("dave", "222"), ("erin", "333")):
        resp = anon.put(
            f"/users/{name}/telegram", json={"chat_id": chat}, headers=bearer(users[name])
        )
        assert resp.status_code == 200 and resp.get_json()["pushed"]
    env = {
        "VIGIL__NOTIFIER__TELEGRAM__BASE_URL": bot.url,
        "VIGIL__NOTIFIER__TELEGRAM__BOT_TOKEN_FILE": str(token_file),
    }
    try:
        notifier = run_service("notifier", "--config", str(cloud_config.path), env=env)
        wait_ready(notifier, 20)
        wait_until(lambda: "3 Telegram chat(s)" in notifier.log_tail(), 10, what="the chats")
        ae = alert_engine_client(broker)
        try:
            publish(
                ae,
                *(
                    alert(
                        alert_id=f"t-{name}", rule_id=f"{name}-hot", rule=f"{name}-hot", owner=name
                    )
                    for name in users
                ),
            )
        finally:
            ae.stop()
        wait_until(lambda: bot.to("111") and len(bot.to("333")) >= 2, 20, what="the messages")
        (sent,) = bot.to("111")
        assert sent["text"].startswith("[FIRING critical] carol-hot on dev-1: temperature 31.2")
        assert len(bot.to("222")) == 1  # chat not found: not tried again

        def states():
            store = SentStore(cloud_config.config.notifier.state_path)
            try:
                return {
                    n.owner: (n.state, n.attempts, n.reason)
                    for n in store.notifications()
                    if n.channel == "telegram"
                }
            finally:
                store.close()

        wait_until(
            lambda: "pending" not in {s for s, _, _ in states().values()}, 20, what="settled"
        )
        got = states()
        assert got["carol"] == ("sent", 1, None)
        assert got["erin"] == ("sent", 2, None)
        assert got["dave"][0:2] == ("failed", 1) and "chat not found" in got["dave"][2]
        assert TOKEN not in notifier.log_tail(200)  # the token is in the URL: never logged
    finally:
        bot.stop()


def test_bad_channel_settings_are_refused_at_load(cloud_config, tmp_path, capsys):
    import yaml

    from notifier.__main__ import main

    for key, value, reason in (
        ("telegram", {"base_url": "ftp://bot"}, "notifier.telegram.base_url"),
        (
            "telegram",
            {"bot_token_file": str(tmp_path / "nope")},
            "notifier.telegram.bot_token_file: cannot read",
        ),
        ("webhooks", {"max_attempts": 0}, "notifier.webhooks.max_attempts"),
        ("grouping", {"group_by": ["rule_id", "rule_id"]}, "notifier.grouping.group_by"),
        ("grouping", {"group_by": ["colour"]}, "notifier.grouping.group_by"),
    ):
        data = yaml.safe_load(cloud_config.path.read_text())
        data["notifier"][key] = value
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(data))
        assert main(["--config", str(bad), "--validate-config"]) == 2
        err = capsys.readouterr().err
        assert f"{bad}: {reason}" in err, err


def test_a_chat_message_is_short_plain_text():
    from notifier.render import telegram_text

    one = telegram_text([alert()])
    assert one == "[FIRING critical] high-temp on dev-1: temperature 31.2 above 30"
    many = telegram_text(
        [alert(alert_id="a"), alert(alert_id="b", device="dev-2")],
        [alert(alert_id="c", device="dev-3")],
    )
    assert many.splitlines()[0] == "[FIRING:2] high-temp on 2 devices"
    assert "Still firing: 1" in many and "high-temp on dev-3" in many
