"""Devices have owners: a user sees and queries only their own devices (another user's is the
404 of one that does not exist), names only those in a rule, and a rule of theirs for every
device or a pattern watches only theirs (its scope in the rule-set snapshot); an admin sees
all. In the test configuration dev-1 is alice's and dev-2 bob's."""

from __future__ import annotations

import pytest
from support import reading
from test_api_users import bearer, make_user

from alert_engine.evaluator import Evaluator
from vigil.messages import DeviceStatus, Rule, decode_rule_set

pytestmark = pytest.mark.integration


def test_a_user_sees_only_their_own_devices(client):
    anon = client.application.test_client()
    alice = make_user(client, "alice")
    mine = anon.get("/devices", headers=bearer(alice)).get_json()["devices"]
    assert [(d["id"], d["owner"]) for d in mine] == [("dev-1", "alice")]
    every = client.get("/devices").get_json()["devices"]
    assert {d["id"] for d in every} >= {"dev-0", "dev-1", "dev-2", "dev-9"}
    for path in ("/devices/{}", "/devices/{}/metrics", "/devices/{}/metrics/temperature/latest",
                 "/devices/{}/config", "/devices/{}/metrics/temperature/replicas"):  # fmt: skip
        theirs = anon.get(path.format("dev-2"), headers=bearer(alice))
        nothing = anon.get(path.format("dev-77"), headers=bearer(alice))
        assert theirs.status_code == nothing.status_code == 404, path
        assert theirs.get_json()["detail"] == "no device 'dev-2'", path
        assert nothing.get_json()["detail"] == "no device 'dev-77'", path
    assert anon.get("/devices/dev-1", headers=bearer(alice)).status_code == 200
    assert client.get("/devices/dev-2").get_json()["owner"] == "bob"  # the admin sees all


def test_a_users_rules_name_and_watch_only_their_devices(client):
    anon = client.application.test_client()
    alice = make_user(client, "alice")
    rule = {"metric": "temperature", "op": "above", "threshold": 30}
    resp = anon.post("/rules", json={**rule, "id": "theirs", "device": "dev-2"},
                     headers=bearer(alice))  # fmt: skip
    assert resp.status_code == 404 and resp.get_json()["detail"] == "no device 'dev-2'"
    for made in ({**rule, "id": "mine", "device": "dev-1"}, {**rule, "id": "any"},
                 {**rule, "id": "pattern", "device": "dev-*"}):  # fmt: skip
        assert anon.post("/rules", json=made, headers=bearer(alice)).status_code == 201
    assert client.post("/rules", json={**rule, "id": "admins"}).status_code == 201
    snap = client.application.extensions["vigil"].publisher._read_snapshot()
    from api.rules_sync import rule_set_payload

    rules = {r.id: r for r in decode_rule_set(rule_set_payload(snap)).rules}
    assert rules["any"].scope == rules["pattern"].scope == frozenset({"dev-1"})
    assert rules["admins"].scope is None  # the admin's watch every device


def test_a_scoped_rule_fires_only_on_its_owners_devices():
    scope = frozenset({"dev-1"})
    hot = Rule.from_dict({"id": "hot", "metric": "temperature", "op": "above", "threshold": 30,
                          "owner": "alice", "scope": sorted(scope)})  # fmt: skip
    gone = Rule.from_dict({"id": "gone", "kind": "offline", "owner": "alice",
                           "scope": ["dev-1"]})  # fmt: skip
    quiet = Rule.from_dict({"id": "quiet", "kind": "nodata", "metric": "temperature",
                            "device": "dev-2", "for_s": 1, "owner": "alice",
                            "scope": ["dev-1"]})  # fmt: skip
    aapl = Rule.from_dict({"id": "aapl", "symbol": "AAPL", "kind": "change", "percent": 1,
                           "window_s": 600, "owner": "alice", "scope": ["dev-1"]})  # fmt: skip
    ev = Evaluator()
    ev.replace_rules([hot, gone, quiet, aapl], 1, 0)
    fired = [a.device for d in ("dev-1", "dev-2") for a in ev.evaluate(reading(31, 1, d), 10)]
    assert fired == ["dev-1"]
    offline = [a.device for d in ("dev-1", "dev-2")
               for a in ev.status(DeviceStatus(d, "offline", None, "lost"), 20)]  # fmt: skip
    assert offline == ["dev-1"]
    assert [a.rule_id for a in ev.tick(60_000)] == []  # dev-2's silence is not alice's to see
    assert hot.to_dict()["scope"] == ["dev-1"] and Rule.from_dict(hot.to_dict()) == hot


def test_a_device_added_for_a_user_is_theirs_and_their_rules_watch_it(client, tmp_path):
    anon = client.application.test_client()
    alice = make_user(client, "alice")
    resp = client.post("/devices", json={"id": "alice-lab", "owner": "nobody"})
    assert resp.status_code == 400 and resp.get_json()["detail"] == "owner: no user 'nobody'"
    resp = client.post("/devices", json={"id": "alice-lab", "owner": "alice"})
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["owner"] == "alice"
    assert anon.get("/devices/alice-lab", headers=bearer(alice)).status_code == 200
    assert anon.post("/rules", json={"id": "any", "metric": "t", "op": "above", "threshold": 1},
                     headers=bearer(alice)).status_code == 201  # fmt: skip
    from api.rules_sync import rule_set_payload

    snap = client.application.extensions["vigil"].publisher._read_snapshot()
    (rule,) = decode_rule_set(rule_set_payload(snap)).rules
    assert rule.scope == frozenset({"dev-1", "alice-lab"})
    assert client.delete("/devices/alice-lab").status_code == 204
    snap = client.application.extensions["vigil"].publisher._read_snapshot()
    (rule,) = decode_rule_set(rule_set_payload(snap)).rules
    assert rule.scope == frozenset({"dev-1"})
