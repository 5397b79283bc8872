"""Bearer-token authentication: every route but /health needs a valid token; tokens are
kept as SHA-256 digests only."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from api import close_app, create_app
from api.__main__ import main
from api.auth import bearer_token, hash_token, read_token_digest

PROTECTED = [
    ("GET", "/devices"),
    ("GET", "/devices/dev-1"),
    ("GET", "/devices/dev-1/metrics/temperature/latest"),
    ("GET", "/devices/dev-1/metrics/temperature/mean?n=5"),
    ("GET", "/devices/dev-1/metrics/temperature/history?limit=5"),
    ("GET", "/devices/dev-1/metrics/temperature/replicas"),
    ("GET", "/ring"),
    ("GET", "/rules"),
    ("POST", "/rules"),
    ("GET", "/rules/hot"),
    ("DELETE", "/rules/hot"),
    ("GET", "/me"),
    ("GET", "/users"),
    ("POST", "/users"),
    ("GET", "/users/admin/tokens"),
    ("GET", "/no-such-route"),
    # Authentication comes first: a caller without a token learns nothing about its input.
    ("GET", "/devices/bad%20id/metrics/temperature/latest"),
    ("GET", "/devices/dev-1/metrics/temperature/mean?n=0"),
    ("GET", "/rules/r%0A"),
    ("DELETE", "/rules/r%0A"),
    ("GET", "/rules?x=1"),
]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# -- pure parts ---------------------------------------------------------------------------
def test_bearer_header_parsing():
    assert bearer_token(None) is None
    assert bearer_token("  ") is None
    assert bearer_token("Bearer abc.DEF-_~+/==") == "abc.DEF-_~+/=="
    assert bearer_token("bearer  tok") == "tok"
    with pytest.raises(ValueError, match="Bearer scheme"):
        bearer_token("Basic dXNlcjpwdw==")
    with pytest.raises(ValueError, match="malformed"):
        bearer_token("Bearer two words")
    with pytest.raises(ValueError, match="malformed"):
        bearer_token("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer tok\nx",
        "Bearer tok\x00",
        "Bearer t\u00f6k",
        "Bearer =tok",
        "Bearer tok=x",
        "Bearer\ttok",
        "Bearer " + "a" * 513,
    ],
)
def test_odd_bearer_headers_are_refused_with_a_reason(header):
    with pytest.raises(ValueError, match=r"malformed|Bearer scheme|longer than 512"):
        bearer_token(header)


def test_admin_digest_file(tmp_path):
    good = tmp_path / "good"
    good.write_text(hashlib.sha256(b"t").hexdigest().upper() + "\n")
    assert read_token_digest(good) == hashlib.sha256(b"t").hexdigest()
    bad = tmp_path / "bad"
    bad.write_text("the-token-itself\n")
    with pytest.raises(ValueError, match="SHA-256 hex digest"):
        read_token_digest(bad)
    with pytest.raises(ValueError, match="cannot read"):
        read_token_digest(tmp_path / "missing")


# -- access control -----------------------------------------------------------------------
@pytest.mark.parametrize("route", PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
@pytest.mark.parametrize(
    "credentials",
    [
        ({}, None),
        (bearer("wrong-token"), "invalid_token"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "invalid_request"),
    ],
    ids=["no-token", "wrong-token", "wrong-scheme"],
)
def test_protected_routes_refuse_missing_or_bad_tokens(anon_client, route, credentials):
    method, path = route
    headers, error = credentials
    resp = anon_client.open(
        path,
        method=method,
        headers=headers,
        json={"id": "hot", "metric": "t", "op": "above", "threshold": 1}
        if method == "POST"
        else None,
    )
    assert resp.status_code == 401
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json(force=True)
    assert body["status"] == 401 and body["title"] == "Unauthorized"
    assert body["instance"] == path.split("?")[0] and body["detail"]
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="vigil"')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)


def test_nothing_was_changed_by_refused_requests(anon_client, cloud_config):
    anon_client.post(
        "/rules",
        json={"id": "hot", "metric": "t", "op": "above", "threshold": 1},
        headers=bearer("wrong"),
    )
    resp = anon_client.get("/rules", headers=bearer(cloud_config.admin_token))
    assert resp.status_code == 200 and resp.get_json()["rules"] == []


def test_health_needs_no_token(anon_client):
    resp = anon_client.get("/health")  # the app is connected to the broker and storage
    assert resp.status_code == 200 and resp.get_json()["status"] == "ok"


def test_the_admin_token_is_accepted(anon_client, cloud_config):
    assert anon_client.get("/ring", headers=bearer(cloud_config.admin_token)).status_code == 200
    assert (
        anon_client.get("/ring", headers=bearer(cloud_config.admin_token + "x")).status_code == 401
    )


def test_a_token_created_with_the_cli_works_and_only_its_digest_is_stored(cloud_config, capsys):
    assert main(["--config", str(cloud_config.path), "--create-token", "ci"]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40
    assert main(["--config", str(cloud_config.path), "--create-token", "ci"]) == 1
    assert "already exists" in capsys.readouterr().err

    app = create_app(cloud_config.config, test_config={"TESTING": True})
    try:
        client = app.test_client()
        assert client.get("/rules", headers=bearer(token)).status_code == 200
        assert client.get("/rules", headers=bearer(token[:-1])).status_code == 401
    finally:
        close_app(app)
    db = sqlite3.connect(cloud_config.config.api.database)
    dump = "\n".join(db.iterdump())
    assert token not in dump and hash_token(token) in dump


def test_an_unusable_admin_digest_file_is_a_config_error(cloud_config, capsys):
    cloud_config.config.api.admin_token_sha256_file.write_text("plaintext-token\n")
    assert main(["--config", str(cloud_config.path), "--validate-config"]) == 2
    err = capsys.readouterr().err
    assert "api.admin_token_sha256_file" in err and "SHA-256 hex digest" in err
