"""``GET /health`` (public): is the API up, is it connected to the broker, which storage
servers answer.

Anyone may ask, so the public answer names things without saying where they are: ``status``,
``broker`` and each storage server's ``name`` and ``up``. A request with a valid bearer token
also gets each server's ``url``. A missing, malformed or unknown token gets the public
answer, never a 401: a health probe must not fail, nor learn anything, because of a stale
credential. Query parameters are ignored (probes add cache-busters).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from flask import Blueprint, current_app

from api.auth import PUBLIC_PATHS, request_caller
from api.resources import resources

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


def _known_caller() -> bool:
    """Whether the request carries a valid token. The API database that holds the tokens
    may be down: then the answer is the public one, since health must answer regardless."""
    try:
        return request_caller() is not None
    except sqlite3.Error as exc:
        log.warning("cannot check the token on /health (%s): answering the public view", exc)
        return False


@bp.get("/")
def index() -> dict[str, Any]:
    """Every route: its methods, path and what it does (public, like /health)."""
    by_path: dict[str, dict[str, str]] = {}
    for rule in current_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = current_app.view_functions[rule.endpoint]
        doc = " ".join((view.__doc__ or "").strip().split("\n\n")[0].split())
        for method in sorted(rule.methods or ()):
            if method not in ("HEAD", "OPTIONS"):
                by_path.setdefault(rule.rule, {})[method] = doc
    routes = [
        {"path": path, "methods": methods, "public": path in PUBLIC_PATHS}
        for path, methods in sorted(by_path.items())
    ]
    return {
        "name": "Vigil API",
        "auth": "Authorization: Bearer <token> on every route but the public ones",
        "errors": "application/problem+json (RFC 9457); 401s follow RFC 6750",
        "idempotency": "Idempotency-Key on any POST, PUT, PATCH or DELETE",
        "openapi": "/openapi.json",
        "docs": "/docs",
        "routes": routes,
    }


@bp.get("/health")
def health() -> dict[str, Any]:
    """Liveness and the state of the API's dependencies.

    ``status`` is "ok" when the broker connection is up and every storage server answers,
    "degraded" otherwise; the answer is 200 either way (the API itself is serving).
    """
    res = resources()
    known = _known_caller()
    broker = res.mqtt.connected
    storage: list[dict[str, Any]] = []
    for node in res.storage.nodes.values():
        entry: dict[str, Any] = {"name": node.name}
        if known:
            entry["url"] = node.url
        entry["up"] = res.storage.server_up(node.name)
        storage.append(entry)
    ok = broker and all(n["up"] for n in storage)
    return {"status": "ok" if ok else "degraded", "broker": broker, "storage": storage}
