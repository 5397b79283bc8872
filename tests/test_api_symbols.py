"""Tickers people follow, through the API, a real Mosquitto, real InfluxDB servers, a real
ingest process and a real agent: each user sees and changes only their own subscriptions;
the symbols followed by anyone are pushed as live configuration, each to exactly one quote
agent (the online ones); a quote is stored once per symbol, and a device that is not a
quote agent cannot forge one; a symbol nobody follows stops being fetched and, after the
retention period, its data is deleted."""

from __future__ import annotations

import json
import threading

import pytest
from support import wait_ready, wait_until, write_agent_config
from test_alert_engine_service import client as mqtt_client
from test_api_users import bearer, make_user

from api.db import Store
from api.ticker_sync import TickerSync
from edge_agent.agent import Agent
from vigil.agent_settings import load_agent_config
from vigil.device_config import decode_device_config
from vigil.messages import DeviceStatus, Reading, encode_readings

pytestmark = pytest.mark.integration


def tickers(watch, device: str) -> list[str] | None:
    """The tickers of the newest live configuration retained for ``device``."""
    got = watch.on(f"vigil/config/devices/{device}")
    if not got or not got[-1].payload:
        return None
    return list(decode_device_config(got[-1].payload).tickers or [])


def test_subscriptions_are_each_users_own_and_each_symbol_goes_to_one_agent(client, broker, probe):
    anon = client.application.test_client()
    alice, bob = make_user(client, "alice"), make_user(client, "bob")
    watch = probe("vigil/config/devices/+")

    resp = anon.put("/users/alice/subscriptions", json={"symbols": ["aapl"]}, headers=bearer(alice))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["symbols"] == ["AAPL"]
    resp = anon.put(
        "/users/bob/subscriptions",
        json={"symbols": ["AAPL", "MSFT", "ENI.MI", "^GSPC"]},
        headers=bearer(bob),
    )
    assert resp.status_code == 200
    followed = {"AAPL", "MSFT", "ENI.MI", "^GSPC"}
    agents = resp.get_json()["agents"]
    assert set(agents) == followed and set(agents.values()) <= {"dev-8", "dev-9"}

    # No agent is online yet: the symbols are spread over every configured one, each once.
    def pushed() -> tuple[list[str] | None, list[str] | None]:
        return tickers(watch, "dev-8"), tickers(watch, "dev-9")

    eight, nine = wait_until(lambda: all(t is not None for t in pushed()) and pushed(), 10)
    assert sorted(eight + nine) == sorted(followed)
    assert {s: a for a, ss in (("dev-8", eight), ("dev-9", nine)) for s in ss} == agents

    # Each sees their own; another user's is the 404 of a user that does not exist.
    mine = anon.get("/users/alice/subscriptions", headers=bearer(alice)).get_json()
    assert mine["symbols"] == ["AAPL"] and mine["agents"]["AAPL"] == agents["AAPL"]
    for path in ("/users/bob/subscriptions", "/users/nobody/subscriptions"):
        resp = anon.get(path, headers=bearer(alice))
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json"
    resp = anon.put("/users/bob/subscriptions", json={"symbols": []}, headers=bearer(alice))
    assert resp.status_code == 404
    listed = anon.get("/symbols", headers=bearer(alice)).get_json()["symbols"]
    assert [(s["symbol"], s["followers"]) for s in listed] == [("AAPL", 2)]
    assert "followed_by" not in listed[0]
    assert listed[0]["stored_as"] == {"device": "quote.AAPL", "metric": "price"}
    every = client.get("/symbols").get_json()["symbols"]
    assert {s["symbol"]: s["followed_by"] for s in every}["AAPL"] == ["alice", "bob"]

    # Bad input: a precise problem, nothing changed.
    resp = anon.put("/users/alice/subscriptions", json={"symbols": ["A B"]}, headers=bearer(alice))
    assert resp.status_code == 400 and resp.mimetype == "application/problem+json"
    assert "symbols[0]: 'A B' is not a ticker symbol" in resp.get_json()["detail"]
    assert (
        anon.put(
            "/users/alice/subscriptions", json={"symbol": "AAPL"}, headers=bearer(alice)
        ).status_code
        == 400
    )
    resp = anon.get("/symbols/ZZZZ/latest", headers=bearer(alice))
    assert (
        resp.status_code == 404
        and "no quotes stored for symbol 'ZZZZ'" in (resp.get_json()["detail"])
    )

    # dev-9 comes online (dev-8 stays away): every symbol moves to dev-9, at once.
    dev9 = mqtt_client(broker, "dev-9")
    try:
        dev9.publish_wait(
            "vigil/status/dev-9",
            DeviceStatus("dev-9", "online", 1_900_000_000_000).encode(),
            retain=True,
        )
    finally:
        dev9.stop()
    wait_until(lambda: pushed() == ([], sorted(followed)), 10, what="all on dev-9")

    # Nobody follows anything: nothing is fetched.
    for user, token in (("alice", alice), ("bob", bob)):
        anon.put(f"/users/{user}/subscriptions", json={"symbols": []}, headers=bearer(token))
    wait_until(lambda: pushed() == ([], []), 10, what="no tickers left")
    assert client.get("/symbols").get_json() == {"symbols": []}


def test_a_followed_symbol_is_fetched_by_its_agent_and_stored_once_per_symbol(
    client, broker, cloud_config, run_service, probe
):
    wait_ready(run_service("ingest_service", "--config", str(cloud_config.path)), 30)
    dead = probe("vigil/deadletter/#")
    alice = make_user(client, "alice")
    anon = client.application.test_client()
    path = write_agent_config(
        cloud_config.path.parent, broker, "dev-9", interval_s=0.2,
        quotes={"symbols": [], "interval_s": 0.2, "source": "simulated", "market_hours": False},
    )  # fmt: skip
    agent = Agent(load_agent_config(path, environ={}))
    thread = threading.Thread(target=agent.run, name="dev-9", daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: (
                (client.get("/devices/dev-9").get_json()["status"] or {}).get("state") == "online"
            ),
            10,
            what="dev-9 online",
        )
        resp = anon.put(
            "/users/alice/subscriptions", json={"symbols": ["AAPL"]}, headers=bearer(alice)
        )
        assert resp.get_json()["agents"] == {"AAPL": "dev-9"}
        latest = wait_until(
            lambda: (
                (r := anon.get("/symbols/AAPL/latest", headers=bearer(alice))).status_code == 200
                and r.get_json()
            ),
            30,
            what="a quote of AAPL stored",
        )
        assert 200 < latest["value"] < 340  # a plausible price, not 20-500
        assert agent.quotes.symbols == ["AAPL"]
        # Stored under the symbol, not under the agent that fetched it.
        assert client.get("/devices/quote.AAPL/metrics").get_json()["metrics"] == ["price"]
        assert "price" not in client.get("/devices/dev-9/metrics").get_json()["metrics"]
    finally:
        agent.stop()
        thread.join(15)

    # A sensor device that is not a quote agent publishes a quote: dead-lettered, not stored.
    dev1 = mqtt_client(broker, "dev-1")
    forged = Reading(
        7, "dev-1", 1_900_000_000_000, "quote", "price", 1.0, "USD",
        {"symbol": "AAPL", "source": "yfinance"},
    )  # fmt: skip
    try:
        dev1.publish_wait("vigil/data/dev-1", encode_readings("dev-1", [forged]))
    finally:
        dev1.stop()
    letter = wait_until(lambda: dead.on("vigil/deadletter/dev-1"), 15, what="the dead letter")
    reason = json.loads(letter[-1].payload)["reason"]
    assert "'dev-1' is not a quote agent" in reason and "AAPL" in reason
    assert anon.get("/symbols/AAPL/latest", headers=bearer(alice)).get_json()["value"] != 1.0


def test_a_symbol_nobody_follows_has_its_data_deleted_after_the_retention_period(tmp_path):
    database = tmp_path / "api.sqlite3"
    store = Store.open(database)
    store.init_schema()
    store.set_subscriptions("admin", ["AAPL", "MSFT"])
    deleted: list[tuple[str, str, int]] = []
    sync = TickerSync(
        database,
        ["dev-9"],
        lambda d: None,
        lambda d, p: True,
        retention_s=3600,
        delete_series=lambda d, m, before: deleted.append((d, m, before)),
    )
    day = 86_400_000
    assert sync.clean_up(1 * day) == []  # both followed
    store.set_subscriptions("admin", ["AAPL"])
    assert sync.clean_up(2 * day) == []  # MSFT unfollowed now: kept for the retention period
    assert sync.clean_up(2 * day + 3_599_000) == []
    store.set_subscriptions("admin", ["AAPL", "MSFT"])  # followed again: the clock restarts
    assert sync.clean_up(2 * day + 3_600_000) == []
    store.set_subscriptions("admin", [])
    assert sync.clean_up(3 * day) == []
    assert sync.clean_up(3 * day + 3_600_000) == ["AAPL", "MSFT"]
    assert deleted == [
        ("quote.AAPL", "price", 3 * day + 3_600_000),
        ("quote.MSFT", "price", 3 * day + 3_600_000),
    ]
    assert sync.clean_up(4 * day) == []  # done once
    store.close()
