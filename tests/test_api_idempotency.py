"""Idempotency-Key: a retried mutation gets its first answer; the same key for another
request is a 422; keys are each user's own; a 5xx is not kept."""

from __future__ import annotations

import pytest
from test_api_users import bearer, make_user

pytestmark = pytest.mark.integration

RULE = {"id": "hot", "metric": "temperature", "op": "above", "threshold": 30}


def test_a_retried_post_gets_its_first_answer_not_a_409(client):
    first = client.post("/rules", json=RULE, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    again = client.post("/rules", json=RULE, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 201 and again.get_json() == first.get_json()
    assert again.headers["Idempotency-Replayed"] == "true"
    assert "Idempotency-Replayed" not in first.headers
    # without a key, the same POST is the 409 it always was
    assert client.post("/rules", json=RULE).status_code == 409
    # the same key for another request
    other = client.post("/rules", json={**RULE, "id": "cold"}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.mimetype == "application/problem+json"
    assert "was used for another request" in other.get_json()["detail"]
    assert client.get("/rules/cold").status_code == 404


def test_keys_are_per_user_and_every_mutation_takes_one(client):
    anon = client.application.test_client()
    alice = make_user(client, "alice")
    made = client.post("/users", json={"name": "bob"}, headers={"Idempotency-Key": "u"})
    assert made.status_code == 201 and made.headers["Location"] == "/users/bob"
    replay = client.post("/users", json={"name": "bob"}, headers={"Idempotency-Key": "u"})
    assert replay.status_code == 201 and replay.get_json()["token"] == made.get_json()["token"]
    assert replay.headers["Location"] == "/users/bob"
    # alice's "u" is not the admin's
    mine = anon.post("/silences", json={"matchers": {"device": "d"}, "duration_s": 60},
                     headers={**bearer(alice), "Idempotency-Key": "u"})  # fmt: skip
    assert mine.status_code == 201
    gone = client.delete("/users/bob", headers={"Idempotency-Key": "del-bob"})
    assert gone.status_code == 204
    assert client.delete("/users/bob", headers={"Idempotency-Key": "del-bob"}).status_code == 204
    assert client.delete("/users/bob").status_code == 404
    # a 4xx answer is kept too: the retry is told the same
    bad = client.post("/rules", json={"id": "x"}, headers={"Idempotency-Key": "bad"})
    assert bad.status_code == 400
    assert client.post(
        "/rules", json={"id": "x"}, headers={"Idempotency-Key": "bad"}
    ).get_json() == (bad.get_json())


@pytest.mark.parametrize("key", ["", "a b", "é", "x" * 256])
def test_a_bad_key_is_a_400(client, key):
    resp = client.post("/rules", json=RULE, headers={"Idempotency-Key": key})
    assert resp.status_code == 400 and "Idempotency-Key must be" in resp.get_json()["detail"]


def test_reads_ignore_the_key(client):
    assert client.get("/rules", headers={"Idempotency-Key": "a b"}).status_code == 200


def test_the_root_lists_every_route_with_what_it_does(anon_client):
    resp = anon_client.get("/")
    assert resp.status_code == 200
    routes = {r["path"]: r for r in resp.get_json()["routes"]}
    assert sorted(routes["/rules"]["methods"]) == ["GET", "POST"]
    assert sorted(routes["/silences/<silence_id>"]["methods"]) == ["DELETE", "GET"]
    assert routes["/"]["public"] and routes["/health"]["public"]
    assert not routes["/notifications"]["public"]
    assert routes["/devices/<device>/metrics"]["methods"]["GET"].startswith("The metrics stored")
    assert routes["/notifications"]["methods"]["GET"].startswith("The caller's notifications")
