"""Rules CRUD, validated like the alert engine validates them, and every change published as
the retained rule-set snapshot on vigil/config/rules."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from support import wait_until

from api.db import MAX_RULES
from vigil.messages import decode_rules
from vigil.topics import Topics

RULES_TOPIC = Topics().rules
#: what a threshold rule shows of the fields left out
DEFAULTS = {"kind": "threshold", "symbol": None, "clear": None, "for_s": 0.0}
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
    assert body["rule"] == {**HOT, "threshold": 30.0, **DEFAULTS, "owner": "admin", "enabled": True}
    assert body["pushed"] is True and resp.headers["Vigil-Rules-Pushed"] == "true"
    assert int(resp.headers["Vigil-Rules-Version"]) == body["version"]

    assert client.get("/rules/hot").get_json() == {
        **HOT,
        "threshold": 30.0,
        **DEFAULTS,
        "owner": "admin",
        "enabled": True,
    }
    listed = client.get("/rules").get_json()
    assert listed["rules"] == [
        {**HOT, "threshold": 30.0, **DEFAULTS, "owner": "admin", "enabled": True}
    ]
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
        ({"id": "r\n"}, "id"),  # issue 6: was accepted, then broke GET /rules
        ({"metric": "temperature\n"}, "metric"),
        ({"device": "dev-1\n"}, "device"),
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
    assert [r.to_dict() for r in rules] == [
        {**HOT, "threshold": 30.0, **DEFAULTS, "enabled": True, "owner": "admin"}
    ]

    assert client.delete("/rules/hot").status_code == 204
    wait_until(lambda: rule_ids(snapshots(watch)[-1]) == [], 10, what="a snapshot without it")
    versions = [v for v, _ in snapshots(watch)]
    assert versions == sorted(versions) and len(set(versions)) >= 2
    after = probe(RULES_TOPIC)
    wait_until(lambda: after.on(RULES_TOPIC), 10, what="the retained snapshot")
    assert decode_rules(after.on(RULES_TOPIC)[-1].payload)[1] == []


def store_row(cloud_config, rule_id, body):
    """Put a row straight into the API database, as an older version may have saved it."""
    db = sqlite3.connect(cloud_config.config.api.database)
    with db:
        db.execute("INSERT INTO rules (id, body, created_at) VALUES (?, ?, 0)", (rule_id, body))
    db.close()


OLD_BAD = {"id": "r\n", "metric": "temperature", "op": "above", "threshold": 1}


def test_a_stored_rule_that_no_longer_validates_breaks_nothing(client, cloud_config, probe):
    """Issue 6: once a rule "r\\n" was stored, GET /rules answered 500 and no later change
    reached the alert engine. Now it is listed as invalid, left out of the published rule
    set, readable as a 409 and deletable."""
    store_row(cloud_config, "r\n", json.dumps(OLD_BAD))
    listed = client.get("/rules")
    assert listed.status_code == 200
    body = listed.get_json()
    assert body["rules"] == []
    assert body["invalid"] == [
        {
            "id": "r\n",
            "owner": "admin",
            "reason": body["invalid"][0]["reason"],
            "href": "/rules/r%0A",
        }
    ]
    assert "rule id 'r\\n' is not a valid name" in body["invalid"][0]["reason"]

    resp = client.get("/rules/r%0A")
    assert resp.status_code == 409 and resp.mimetype == "application/problem+json"
    problem = resp.get_json()
    assert problem["type"] == "urn:vigil:problem:invalid-stored-rule"
    assert problem["rule_id"] == "r\n" and "DELETE it" in problem["detail"]

    # Later changes still reach the engine, without the bad row.
    watch = probe(RULES_TOPIC)
    created = client.post("/rules", json=HOT)
    assert created.status_code == 201 and created.get_json()["pushed"] is True
    wait_until(lambda: rule_ids(snapshots(watch)[-1]) == ["hot"], 10, what="a snapshot")

    assert client.delete(body["invalid"][0]["href"]).status_code == 204
    after = client.get("/rules").get_json()
    assert after["invalid"] == [] and [r["id"] for r in after["rules"]] == ["hot"]
    # An id that is no name and not stored is a 400, as before.
    for method in ("GET", "DELETE"):
        resp = client.open("/rules/r%0A", method=method)
        assert resp.status_code == 400 and resp.get_json()["parameter"] == "rule_id"


def test_a_stored_body_that_no_longer_validates_is_a_409_for_its_valid_id(client, cloud_config):
    store_row(cloud_config, "hot", json.dumps({**HOT, "threshold": 10**400}))
    assert client.get("/rules").get_json()["invalid"][0]["id"] == "hot"
    body = client.get("/rules/hot").get_json()
    assert body["status"] == 409 and "digits" in body["detail"]
    assert client.post("/rules", json=HOT).status_code == 409  # the id is taken until deleted
    assert client.delete("/rules/hot").status_code == 204
    assert client.post("/rules", json=HOT).status_code == 201


@pytest.mark.parametrize("url", ["/rules?x=1", "/rules/hot?verbose=1"])
def test_rule_routes_take_no_query_parameters(client, url):
    resp = client.get(url)
    assert resp.status_code == 400 and resp.get_json()["type"].endswith("invalid-parameter")


def test_the_number_of_rules_is_bounded(client, cloud_config):
    db = sqlite3.connect(cloud_config.config.api.database)
    with db:
        db.executemany(
            "INSERT INTO rules (id, body, created_at) VALUES (?, ?, 0)",
            [(f"r{i}", json.dumps({**HOT, "id": f"r{i}"})) for i in range(MAX_RULES)],
        )
    db.close()
    resp = client.post("/rules", json=HOT)
    assert resp.status_code == 409 and resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["type"] == "urn:vigil:problem:too-many-rules" and body["limit"] == MAX_RULES
    assert client.delete("/rules/r0").status_code == 204
    assert client.post("/rules", json=HOT).status_code == 201


def test_stored_ids_that_cannot_be_a_path_segment_have_no_href(client, cloud_config):
    store_row(cloud_config, "a/b", json.dumps({**HOT, "id": "a/b"}))
    db = sqlite3.connect(cloud_config.config.api.database)
    with db:  # not UTF-8: sqlite3 would raise on it for the whole query
        db.execute(
            "INSERT INTO rules (id, body, created_at) "
            "VALUES (CAST(x'ff' AS TEXT), CAST(x'ff' AS TEXT), 0)"
        )
    db.close()
    resp = client.get("/rules")
    assert resp.status_code == 200
    invalid = resp.get_json()["invalid"]
    assert [(bad["id"], bad["href"]) for bad in invalid] == [("a/b", None), ("\udcff", None)]


def test_a_locked_database_is_a_503_with_retry_after(app, client, cloud_config):
    app.config["DATABASE_TIMEOUT_S"] = 0.1
    holder = sqlite3.connect(cloud_config.config.api.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        resp = client.post("/rules", json=HOT)
        assert resp.status_code == 503 and resp.mimetype == "application/problem+json"
        body = resp.get_json()
        assert body["type"] == "urn:vigil:problem:database-unavailable" and body["status"] == 503
        assert resp.headers["Retry-After"] == "5"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert client.post("/rules", json=HOT).status_code == 201


def test_a_rule_is_replaced_and_changed_in_place(client, probe):
    """Issue 9: a rule could not be edited (PUT was a 405)."""
    watch = probe(RULES_TOPIC)
    assert client.post("/rules", json=HOT).status_code == 201
    resp = client.put("/rules/hot", json={**HOT, "threshold": 35, "name": "Hotter"})
    assert resp.status_code == 200 and resp.headers["Vigil-Rules-Pushed"] == "true"
    body = resp.get_json()
    assert (body["rule"]["threshold"], body["rule"]["name"]) == (35.0, "Hotter")
    # PUT is whole: what it leaves out takes its default
    resp = client.put("/rules/hot", json={k: v for k, v in HOT.items() if k != "severity"})
    assert resp.get_json()["rule"]["severity"] == "warning"
    resp = client.patch("/rules/hot", json={"enabled": False, "severity": "critical"})
    assert resp.status_code == 200
    rule = client.get("/rules/hot").get_json()
    assert (rule["enabled"], rule["severity"], rule["threshold"]) == (False, "critical", 30.0)
    version = int(resp.headers["Vigil-Rules-Version"])

    def published():
        snaps = [s for s in snapshots(watch) if s[0] == version]
        return snaps[-1][1] if snaps else None

    [out] = wait_until(published, 10, what="the changed rule published")
    assert (out.id, out.enabled, out.severity) == ("hot", False, "critical")


@pytest.mark.parametrize(
    ("method", "body", "status", "detail"),
    [
        ("put", {**HOT, "id": "other"}, 400, "id: the body names 'other', the path 'hot'"),
        ("put", {**HOT, "owner": "bob"}, 400, "owner: a rule's owner cannot change"),
        ("patch", {"threshold": "hot"}, 400, "threshold: Input should be a valid number"),
        ("patch", {"enabled": "no"}, 400, "enabled: Input should be a valid boolean"),
        ("patch", {"colour": "red"}, 400, "unknown field 'colour' (allowed: clear, device,"),
        ("patch", [], 400, "the body must be a JSON object"),
    ],
)
def test_a_bad_change_is_refused_and_changes_nothing(client, method, body, status, detail):
    assert client.post("/rules", json=HOT).status_code == 201
    resp = getattr(client, method)("/rules/hot", json=body)
    assert resp.status_code == status and resp.mimetype == "application/problem+json"
    assert detail in resp.get_json()["detail"]
    assert client.get("/rules/hot").get_json()["threshold"] == 30.0


def test_changing_a_rule_that_does_not_exist_is_a_404(client):
    for method in ("put", "patch"):
        resp = getattr(client, method)("/rules/nope", json=HOT)
        assert resp.status_code == 404 and "no rule with id 'nope'" in resp.get_json()["detail"]


def test_every_kind_of_rule_through_the_api(client):
    kinds = [
        {"id": "band", "metric": "humidity", "kind": "band", "low": 30, "high": 80},
        {"id": "jump", "symbol": "aapl", "kind": "change", "percent": 2, "window_s": 300},
        {"id": "quiet", "metric": "temperature", "kind": "nodata", "for_s": 60,
         "device": "dev-*"},
        {"id": "gone", "kind": "offline", "device": "dev-1", "for_s": 30},
        {"id": "hot2", "metric": "temperature", "op": "above", "threshold": 30, "clear": 28,
         "for_s": 10},
    ]  # fmt: skip
    for body in kinds:
        resp = client.post("/rules", json=body)
        assert resp.status_code == 201, resp.get_json()
    jump = client.get("/rules/jump").get_json()
    assert (jump["symbol"], jump["metric"], jump["direction"]) == ("AAPL", "price", "any")
    # PATCH a level; then a new kind, which keeps only the common fields
    assert client.patch("/rules/band", json={"high": 90}).get_json()["rule"]["high"] == 90.0
    changed = client.patch(
        "/rules/band", json={"kind": "threshold", "op": "above", "threshold": 85}
    ).get_json()["rule"]
    assert (changed["kind"], changed["threshold"], changed["metric"]) == (
        "threshold",
        85.0,
        "humidity",
    )
    assert "low" not in changed


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"kind": "band", "low": 9, "high": 1}, "low (9) must be below high (1)"),
        ({"op": "above", "threshold": 30, "clear": 35}, "clear (35) must be at or below"),
        ({"kind": "change", "percent": 2}, "missing required field 'window_s'"),
        ({"kind": "nodata", "op": "above"}, "op do not apply to a nodata rule"),
    ],
)
def test_a_malformed_rule_of_any_kind_is_a_precise_400(client, body, detail):
    resp = client.post("/rules", json={"id": "bad", "metric": "temperature", **body})
    assert resp.status_code == 400 and resp.mimetype == "application/problem+json"
    assert detail in resp.get_json()["detail"]
