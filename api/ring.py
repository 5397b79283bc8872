"""The storage ring: which servers there are, their share of series, and where a series
lives."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from api.names import check_path_names
from api.owners import visible_device
from api.resources import resources
from api.validation import reject_args
from storage_nodes import series_key

bp = Blueprint("ring", __name__)
bp.before_request(check_path_names)


@bp.get("/ring")
def ring() -> dict[str, Any]:
    """The ring's settings and every server: url, whether it answers, and the fraction of
    the hash space it is primary for."""
    reject_args(request.args.to_dict(flat=False))
    storage = resources().storage
    return {
        "replication_factor": storage.ring.replication_factor,
        "vnodes": storage.ring.vnodes,
        "nodes": storage.status(),
    }


@bp.get("/devices/<device>/metrics/<metric>/replicas")
def replicas(device: str, metric: str) -> dict[str, Any]:
    """The servers holding one series, primary first (computed from the ring: no data
    needs to exist)."""
    reject_args(request.args.to_dict(flat=False))
    visible_device(device)
    nodes = resources().storage.replicas(device, metric)
    return {
        "series": series_key(device, metric),
        "replicas": [{"name": n.name, "url": n.url} for n in nodes],
    }
