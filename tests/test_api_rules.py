"""Rules CRUD, validated like the alert engine validates them, and every change published as
the retained rule-set snapshot on vigil/config/rules."""

from __future__ import annotations

import re

import pytest
from support import wait_until

from vigil.messages import decode_rules
from vigil.topics import Topics

RULES_TOPIC = Topics().rules
HOT = {
    "id": "hot",
    "name": "Hot lab",
    "metric": "temperature",
    "device": "dev-1",
    "op": "above",
    "threshold": 30,
    "severity": "critical",
}


def snapshots(watch):
    return [decode_rules(m.payload) for m in watch.on(RULES_TOPIC)]


def rule_ids(snapshot):
    return sorted(r.id for r in snapshot[1])


def test_create_read_list_delete(client):
    resp = client.post("/rules", json=HOT)
    assert resp.status_code == 201
    assert resp.headers["Location"] == "/rules/hot"
    body = resp.get_json()
    assert body["rule"] == {**HOT, "threshold": 30.0}
    assert body["pushed"] is True and resp.headers["Vigil-Rules-Pushed"] == "true"
    assert int(resp.headers["Vigil-Rules-Version"]) == body["version"]

    assert client.get("/rules/hot").get_json() == {**HOT, "threshold": 30.0}
    listed = client.get("/rules").get_json()
    assert listed["rules"] == [{**HOT, "threshold": 30.0}]
    assert listed["version"] == body["version"] and listed["pushed"] is True

    resp = client.delete("/rules/hot")
    assert resp.status_code == 204 and resp.data == b""
    assert int(resp.headers["Vigil-Rules-Version"]) > body["version"]
    assert client.get("/rules/hot").status_code == 404
    assert client.delete("/rules/hot").status_code == 404
    assert client.get("/rules").get_json()["rules"] == []


def test_the_id_is_derived_from_the_name_when_absent(client):
    resp = client.post(
        "/rules",
        json={"name": "Cold room (B2)", "metric": "temperature", "op": "below", "threshold": 2},
    )
    assert resp.status_code == 201
    assert resp.headers["Location"] == "/rules/cold-room-b2"
    assert resp.get_json()["rule"]["name"] == "Cold room (B2)"


def test_a_duplicate_id_is_a_409_problem(client):
    assert client.post("/rules", json=HOT).status_code == 201
    resp = client.post("/rules", json={**HOT, "threshold": 50})
    assert resp.status_code == 409 and resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["rule_id"] == "hot" and "'hot' already exists" in body["detail"]
    assert client.get("/rules/hot").get_json()["threshold"] == 30.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": None}, "metric"),
        ({"op": "sideways"}, "op"),
        ({"threshold": "high"}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"severity": "apocalyptic"}, "severity"),
        ({"device": "dev 1"}, "device"),
        ({"id": "bad id"}, "id"),
        ({"colour": "red"}, "colour"),
        ({"name": "x" * 201}, "name"),
    ],
)
def test_invalid_rules_are_400_problems_naming_the_field(client, change, field):
    rule = {**HOT, **change}
    rule = {k: v for k, v in rule.items() if v is not None}
    resp = client.post("/rules", json=rule)
    assert resp.status_code == 400 and resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["type"] == "urn:vigil:problem:invalid-rule" and body["instance"] == "/rules"
    # the field as a word of its own ("id" inside "invalid" does not count)
    assert re.search(rf"(?<![A-Za-z_]){field}(?![A-Za-z_])", body["detail"]), body["detail"]
    assert client.get("/rules").get_json()["rules"] == []


def test_a_rule_without_id_or_usable_name_is_refused(client):
    rule = {k: v for k, v in HOT.items() if k not in ("id", "name")}
    body = client.post("/rules", json=rule).get_json()
    assert "'id'" in body["detail"] and "'name'" in body["detail"]
    body = client.post("/rules", json={**rule, "name": "!!!"}).get_json()
    assert body["status"] == 400 and "cannot derive a rule id" in body["detail"]
    body = client.post("/rules", json=[HOT]).get_json()
    assert body["status"] == 400 and "JSON object" in body["detail"]


def test_a_created_rule_reaches_mqtt_and_a_deleted_one_leaves(client, probe):
    watch = probe(RULES_TOPIC)
    wait_until(lambda: watch.on(RULES_TOPIC), 10, what="the startup snapshot")
    assert client.post("/rules", json=HOT).status_code == 201
    version = client.get("/rules").get_json()["version"]

    # A client subscribing now gets the retained snapshot holding the rule.
    late = probe(RULES_TOPIC)
    retained = wait_until(lambda: late.on(RULES_TOPIC), 10, what="the retained snapshot")
    assert retained[-1].retain
    got_version, rules = decode_rules(retained[-1].payload)
    assert got_version == version
    assert [r.to_dict() for r in rules] == [{**HOT, "threshold": 30.0}]

    assert client.delete("/rules/hot").status_code == 204
    wait_until(lambda: rule_ids(snapshots(watch)[-1]) == [], 10, what="a snapshot without it")
    versions = [v for v, _ in snapshots(watch)]
    assert versions == sorted(versions) and len(set(versions)) >= 2
    after = probe(RULES_TOPIC)
    wait_until(lambda: after.on(RULES_TOPIC), 10, what="the retained snapshot")
    assert decode_rules(after.on(RULES_TOPIC)[-1].payload)[1] == []
