"""Devices (configured ones and any seen on the status topics, with their latest status)
and queries of their stored readings."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from api.names import check_path_names
from api.problems import Problem
from api.resources import resources
from api.status import device_view, list_devices
from api.validation import parse_history_args, parse_mean_args, reject_args

bp = Blueprint("devices", __name__, url_prefix="/devices")
bp.before_request(check_path_names)


def _args() -> dict[str, list[str]]:
    return request.args.to_dict(flat=False)


def _no_data(device: str, metric: str) -> Problem:
    return Problem(404, f"no readings of {metric!r} stored for device {device!r}")


@bp.get("")
def index() -> dict[str, Any]:
    """Every configured device and every device seen on the status topics, each with its
    latest status (null until it published one)."""
    reject_args(_args())
    res = resources()
    return {"devices": list_devices(res.config.devices, res.status.all())}


@bp.get("/<device>")
def get_device(device: str) -> dict[str, Any]:
    """One device; 404 if it is neither configured nor ever seen."""
    reject_args(_args())
    res = resources()
    configured = {d.id: d for d in res.config.devices}
    status = res.status.get(device)
    if device not in configured and status is None:
        raise Problem(404, f"device {device!r} is not configured and has published no status")
    return device_view(device, configured, status)


@bp.get("/<device>/metrics/<metric>/latest")
def latest(device: str, metric: str) -> dict[str, Any]:
    """The newest stored reading of one series."""
    reject_args(_args())
    point = resources().storage.latest(device, metric)
    if point is None:
        raise _no_data(device, metric)
    return {
        "device": device,
        "metric": metric,
        "ts": point.ts,
        "value": point.value,
        "id": point.id,
    }


@bp.get("/<device>/metrics/<metric>/mean")
def mean(device: str, metric: str) -> dict[str, Any]:
    """The mean of the last ``n`` stored values (``n`` 1..10000, default 10); ``count`` says
    how many there were."""
    n = parse_mean_args(_args())
    result = resources().storage.mean_of_last(device, metric, n)
    if result is None:
        raise _no_data(device, metric)
    value, count = result
    return {"device": device, "metric": metric, "mean": value, "count": count, "n": n}


@bp.get("/<device>/metrics/<metric>/history")
def history(device: str, metric: str) -> dict[str, Any]:
    """Stored readings between ``since`` and ``until`` (epoch ms, inclusive), at most
    ``limit`` (default 100), ``order`` desc (default: the newest) or asc (the oldest)."""
    q = parse_history_args(_args())
    points = resources().storage.points(
        device,
        metric,
        since_ms=q.since_ms,
        until_ms=q.until_ms,
        limit=q.limit,
        newest_first=q.newest_first,
    )
    return {
        "device": device,
        "metric": metric,
        "order": q.order,
        "limit": q.limit,
        "points": [{"ts": p.ts, "value": p.value, "id": p.id} for p in points],
    }
