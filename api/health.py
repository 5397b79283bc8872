"""``GET /health`` (public): is the API up, is it connected to the broker, which storage
servers answer."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.resources import resources

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> dict[str, Any]:
    """Liveness and the state of the API's dependencies.

    ``status`` is "ok" when the broker connection is up and every storage server answers,
    "degraded" otherwise; the answer is 200 either way (the API itself is serving).
    """
    res = resources()
    broker = res.mqtt.connected
    storage = [{"name": n.name, "url": n.url, "up": n.ping()} for n in res.storage.nodes.values()]
    ok = broker and all(n["up"] for n in storage)
    return {"status": "ok" if ok else "degraded", "broker": broker, "storage": storage}
