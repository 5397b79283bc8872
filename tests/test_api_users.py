"""Users, roles and tokens through the API: the grants and, as carefully, the refusals (a
user asking about another user gets the 404 of a user that does not exist)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from support import wait_until

from api.auth import hash_token

PROBLEM = "application/problem+json"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_user(client, name: str, role: str = "user") -> str:
    resp = client.post("/users", json={"name": name, "role": role})
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert resp.headers["Location"] == f"/users/{name}"
    assert resp.headers["Cache-Control"] == "no-store"
    assert body["name"] == name and body["role"] == role and body["tokens"] == 1
    return str(body["token"]["token"])


@pytest.fixture
def alice(client) -> str:
    return make_user(client, "alice")


@pytest.fixture
def bob(client) -> str:
    return make_user(client, "bob")


def test_the_admin_creates_users_whose_tokens_name_them(client, anon_client, alice):
    me = anon_client.get("/me", headers=bearer(alice)).get_json()
    assert (me["name"], me["role"]) == ("alice", "user")
    assert client.get("/me").get_json()["role"] == "admin"
    names = [u["name"] for u in client.get("/users").get_json()["users"]]
    assert names == ["admin", "alice"]


def test_only_digests_of_user_tokens_are_stored(client, cloud_config, alice):
    dump = "\n".join(sqlite3.connect(cloud_config.config.api.database).iterdump())
    assert alice not in dump and hash_token(alice) in dump


def test_a_user_cannot_manage_users_or_see_others(anon_client, alice, bob):
    as_alice = bearer(alice)
    assert anon_client.get("/users", headers=as_alice).status_code == 403
    resp = anon_client.post("/users", json={"name": "eve"}, headers=as_alice)
    assert resp.status_code == 403 and resp.mimetype == PROBLEM
    assert "admin token" in resp.get_json()["detail"]
    # Another user and a user that does not exist look the same: no names to probe.
    for name in ("bob", "nobody", "admin"):
        for method, url in [
            ("get", f"/users/{name}"),
            ("patch", f"/users/{name}"),
            ("delete", f"/users/{name}"),
            ("get", f"/users/{name}/tokens"),
            ("post", f"/users/{name}/tokens"),
            ("delete", f"/users/{name}/tokens/t000000000000"),
        ]:
            resp = getattr(anon_client, method)(url, json={"role": "admin"}, headers=as_alice)
            assert resp.status_code == 404, (method, url)
            assert resp.get_json()["detail"] == f"no user {name!r}"
    # Nor can a user make themself an admin or remove themself.
    assert (
        anon_client.patch("/users/alice", json={"role": "admin"}, headers=as_alice).status_code
        == 403
    )
    assert anon_client.delete("/users/alice", headers=as_alice).status_code == 403
    assert anon_client.get("/me", headers=as_alice).get_json()["role"] == "user"


def test_a_user_issues_and_revokes_their_own_tokens(anon_client, alice):
    as_alice = bearer(alice)
    resp = anon_client.post("/users/alice/tokens", json={"label": "cli"}, headers=as_alice)
    assert resp.status_code == 201 and resp.headers["Cache-Control"] == "no-store"
    second = resp.get_json()
    assert second["label"] == "cli" and resp.headers["Location"] == second["href"]
    listed = anon_client.get("/users/alice/tokens", headers=as_alice).get_json()["tokens"]
    assert [t["label"] for t in listed] == ["first", "cli"]
    assert all("token" not in t for t in listed)
    assert anon_client.get("/me", headers=bearer(second["token"])).status_code == 200
    assert anon_client.delete(second["href"], headers=as_alice).status_code == 204
    resp = anon_client.get("/me", headers=bearer(second["token"]))
    assert resp.status_code == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert anon_client.delete(second["href"], headers=as_alice).status_code == 404
    # A token issued without a body has no label.
    resp = anon_client.post("/users/alice/tokens", headers=as_alice)
    assert resp.status_code == 201 and resp.get_json()["label"] == ""


def test_the_admin_changes_roles_and_removes_users(client, anon_client, alice):
    resp = client.patch("/users/alice", json={"role": "admin"})
    assert resp.status_code == 200 and resp.get_json()["role"] == "admin"
    assert anon_client.get("/users", headers=bearer(alice)).status_code == 200
    assert client.delete("/users/alice").status_code == 204
    assert anon_client.get("/me", headers=bearer(alice)).status_code == 401
    assert client.get("/users/alice").status_code == 404
    assert client.delete("/users/alice").status_code == 404


def test_the_admin_user_stays_admin(client):
    resp = client.patch("/users/admin", json={"role": "user"})
    assert resp.status_code == 409 and resp.mimetype == PROBLEM
    assert client.delete("/users/admin").status_code == 409


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "name: required key is missing"),
        ({"name": "a b"}, "name: 'a b' is not a name"),
        ({"name": 5}, "name: Input should be a valid string, not an integer"),
        ({"name": "carol", "role": "root"}, "role: must be one of admin, user, got 'root'"),
        ({"name": "carol", "password": "x"}, "unknown field 'password'"),
        ({"name": "carol", "label": "a\nb"}, "label: at most 100 characters"),
        ([], "the body must be a JSON object"),
    ],
)
def test_a_bad_user_gets_a_precise_problem(client, body, detail):
    resp = client.post("/users", json=body)
    assert resp.status_code == 400 and resp.mimetype == PROBLEM
    assert detail in resp.get_json()["detail"]


def test_a_duplicate_user_is_a_conflict(client, alice):
    resp = client.post("/users", json={"name": "alice"})
    assert resp.status_code == 409 and resp.get_json()["user"] == "alice"


def test_the_cli_creates_a_user_with_a_role(cloud_config, anon_client, capsys):
    from api.__main__ import main

    assert (
        main(["--config", str(cloud_config.path), "--create-token", "ops", "--role", "admin"]) == 0
    )
    token = capsys.readouterr().out.strip()
    assert anon_client.get("/me", headers=bearer(token)).get_json()["role"] == "admin"


RULE = {"id": "hot", "metric": "temperature", "op": "above", "threshold": 30, "device": "dev-1"}


def test_users_see_and_change_only_their_own_rules(client, anon_client, alice, bob):
    """Issue 9: a token made for alice deleted the admin's rule (204)."""
    as_alice, as_bob = bearer(alice), bearer(bob)
    assert client.post("/rules", json={**RULE, "id": "admins"}).status_code == 201
    resp = anon_client.post("/rules", json=RULE, headers=as_alice)
    assert resp.status_code == 201 and resp.get_json()["rule"]["owner"] == "alice"
    # bob, and alice for the admin's rule: the 404 of a rule that does not exist.
    for headers, rule_id in [(as_bob, "hot"), (as_alice, "admins")]:
        for method in ("get", "delete"):
            resp = getattr(anon_client, method)(f"/rules/{rule_id}", headers=headers)
            assert resp.status_code == 404 and resp.mimetype == PROBLEM, (method, rule_id)
            assert resp.get_json()["detail"] == f"no rule with id {rule_id!r}"
    assert anon_client.get("/rules", headers=as_bob).get_json()["rules"] == []
    mine = anon_client.get("/rules", headers=as_alice).get_json()["rules"]
    assert [(r["id"], r["owner"]) for r in mine] == [("hot", "alice")]
    everyone = client.get("/rules").get_json()["rules"]
    owners = sorted((r["id"], r["owner"]) for r in everyone)
    assert owners == [("admins", "admin"), ("hot", "alice")]
    assert client.get("/rules/admins").status_code == 200
    assert anon_client.get("/rules/hot", headers=as_alice).get_json()["owner"] == "alice"
    for method in ("put", "patch"):  # nor change it
        resp = getattr(anon_client, method)("/rules/hot", json=RULE, headers=as_bob)
        assert resp.status_code == 404, method
    resp = anon_client.patch("/rules/hot", json={"threshold": 40}, headers=as_alice)
    assert resp.status_code == 200 and resp.get_json()["rule"]["owner"] == "alice"
    assert anon_client.delete("/rules/hot", headers=as_alice).status_code == 204


def test_only_an_admin_creates_rules_for_another_user(client, anon_client, alice):
    resp = anon_client.post("/rules", json={**RULE, "owner": "bob"}, headers=bearer(alice))
    assert resp.status_code == 403 and resp.mimetype == PROBLEM
    resp = client.post("/rules", json={**RULE, "owner": "alice"})
    assert resp.status_code == 201 and resp.get_json()["rule"]["owner"] == "alice"
    assert anon_client.get("/rules/hot", headers=bearer(alice)).status_code == 200
    resp = client.post("/rules", json={**RULE, "id": "x", "owner": "nobody"})
    assert resp.status_code == 400 and "owner: no user 'nobody'" in resp.get_json()["detail"]


def test_a_removed_users_rules_leave_the_published_rule_set(client, anon_client, alice, probe):
    watch = probe("vigil/config/rules")
    assert anon_client.post("/rules", json=RULE, headers=bearer(alice)).status_code == 201
    assert client.delete("/users/alice").status_code == 204
    assert client.get("/rules").get_json()["rules"] == []

    def published_ids():
        msgs = watch.on("vigil/config/rules")
        return [r["id"] for r in json.loads(msgs[-1].payload)["rules"]] if msgs else None

    wait_until(lambda: published_ids() == [], what="a rule set without alice's rule")
