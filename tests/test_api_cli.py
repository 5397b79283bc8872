"""``vigil`` over HTTP against a real API process, as the done-when story goes: the admin
makes alice and bob, each logs in with their token, alice sets a threshold rule and her
address, bob a webhook; each sees only their own rules and notifications; errors are one line
with the API's detail; ``--json`` prints the API's answer."""

from __future__ import annotations

import json

import pytest
from support import alert, wait_ready, wait_until
from test_devices_cli import _healthy
from test_notifier_service import alert_engine_client, publish
from test_webhooks import Receiver

from stack.api_cli import hoist, main, wants

pytestmark = pytest.mark.integration


def test_global_options_may_come_anywhere():
    assert hoist(["rules", "list", "--json", "--api", "http://x"]) == [
        "--json", "--api", "http://x", "rules", "list",
    ]  # fmt: skip
    assert wants(["--token", "rules", "whoami"])  # "rules" is the token's value here
    assert wants(["rules", "list"]) and not wants(["run"]) and not wants(["devices", "list"])


def test_the_cli_tells_alice_and_bob_apart(cloud_config, broker, run_service, tmp_path, capsys):
    api = cloud_config.config.api
    url = f"http://{api.host}:{api.port}"
    run_service("api", "--config", str(cloud_config.path))
    wait_until(lambda: _healthy(url), 30, what="the API answering")

    def vigil(*args: str, who: str = "admin") -> tuple[int, str, str]:
        login = ["--login-file", str(tmp_path / f"{who}.json")]
        if who == "admin":
            login += ["--api", url, "--token", cloud_config.admin_token]
        code = main([*args, *login])
        out = capsys.readouterr()
        return code, out.out, out.err

    tokens = {}
    for name in ("alice", "bob"):
        code, out, _ = vigil("--json", "users", "add", name)
        assert code == 0, out
        tokens[name] = json.loads(out)["token"]["token"]
        login = ["login", "--api", url, "--token", tokens[name]]
        code = main([*login, "--login-file", str(tmp_path / f"{name}.json")])
        assert code == 0 and f"as {name} (user)" in capsys.readouterr().out
    code, out, _ = vigil("users", "list")
    assert code == 0 and "alice" in out and "bob" in out and "ROLE" in out
    assert vigil("whoami", who="bob")[1].startswith("bob (user)")

    code, out, _ = vigil(
        "rules", "add", "hot", "--metric", "temperature", "--device", "dev-1",
        "--above", "30", "--for", "10", "--clear", "28", who="alice",
    )  # fmt: skip
    assert code == 0 and "temperature above 30.0 for 10.0 s, clear 28.0 on dev-1" in out, out
    code, out, _ = vigil(
        "rules", "add", "aapl", "--kind", "change", "--symbol", "AAPL", "--percent", "2",
        "--window", "300", who="alice",
    )  # fmt: skip
    assert code == 0 and "price any 2.0% in 300.0 s on symbol AAPL" in out, out
    assert (
        vigil("rules", "add", "b-hot", "--metric", "temperature", "--above", "31", who="bob")[0]
        == 0
    )
    assert vigil("recipients", "set", "alice@test.invalid", who="alice")[1].strip() == (
        "alice@test.invalid"
    )
    code, out, _ = vigil("subscriptions", "follow", "aapl", "ENI.MI", who="alice")
    assert code == 0 and "SYMBOL" in out and "AAPL" in out and "ENI.MI" in out, out
    code, out, _ = vigil("--json", "subscriptions", "unfollow", "ENI.MI", who="alice")
    answer = json.loads(out)
    assert answer["symbols"] == ["AAPL"] and answer["agents"]["AAPL"] in ("dev-8", "dev-9")
    assert vigil("subscriptions", who="bob")[1].strip() == "(none)"
    code, _, err = vigil("subscriptions", "follow", "A B", who="bob")
    assert code == 1 and "symbols[0]: 'A B' is not a ticker symbol" in err
    receiver = Receiver()
    try:
        code, out, _ = vigil("webhooks", "add", "ops", receiver.url + "/bob", who="bob")
        assert code == 0 and "signing secret" in out and "shown only now" in out

        code, out, _ = vigil("rules", "list", who="alice")
        assert "hot" in out and "aapl" in out and "b-hot" not in out
        code, out, err = vigil("rules", "delete", "b-hot", who="alice")
        assert code == 1 and out == "" and "404" in err and "b-hot" in err
        code, out, err = vigil("rules", "add", "bad", "--metric", "temperature", who="alice")
        assert code == 1 and err.startswith("vigil rules: POST /rules: 400 "), err
        code, out, _ = vigil("--json", "rules", "list", who="admin")
        assert {r["id"] for r in json.loads(out)["rules"]} == {"hot", "aapl", "b-hot"}

        code, out, _ = vigil("silences", "add", "--match", "device=dev-9", "--for", "60", who="bob")
        assert code == 0 and "active" in out
        sid = out.split()[1]
        assert sid in vigil("silences", "list", who="bob")[1]
        assert sid not in vigil("silences", "list", who="alice")[1]
        assert "expired" in vigil("silences", "expire", sid, who="bob")[1]

        notifier = run_service("notifier", "--config", str(cloud_config.path))
        wait_ready(notifier, 20)
        ae = alert_engine_client(broker)
        try:
            publish(
                ae,
                alert(alert_id="c-a", rule_id="hot", rule="hot", owner="alice"),
                alert(alert_id="c-b", rule_id="b-hot", rule="b-hot", owner="bob"),
            )
        finally:
            ae.stop()
        wait_until(lambda: receiver.on("/bob"), 20, what="bob's webhook")

        def settled(who: str, n: int) -> bool:
            code, out, _ = vigil("--json", "notifications", who=who)
            got = json.loads(out)["notifications"] if code == 0 else []
            return len(got) == n and all(x["state"] != "pending" for x in got)

        wait_until(lambda: settled("alice", 1), 20, what="alice's notification")
        wait_until(lambda: settled("bob", 2), 20, what="bob's two (email skipped, webhook)")
        out = vigil("notifications", who="alice")[1]
        assert "email" in out and "sent" in out and "hot on dev-1" in out and "b-hot" not in out
        out = vigil("notifications", "--channel", "webhook", who="bob")[1]
        assert "webhook" in out and "sent" in out and "email" not in out
    finally:
        receiver.stop()
    code, out, err = vigil("query", "dev-1", "temperature", "--latest", who="alice")
    assert code == 1 and "404" in err
    code, out, err = vigil("query", "dev-1", who="alice")
    assert code == 1 and "no readings stored for device 'dev-1'" in err
    assert vigil("logout", who="alice")[1].startswith("logged out")
    gone = ["whoami", "--login-file", str(tmp_path / "alice.json"), "--stack-dir", str(tmp_path)]
    assert main(gone) == 1 and "no API to talk to" in capsys.readouterr().err
