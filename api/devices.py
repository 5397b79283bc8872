"""Devices: configured ones (vigil.yaml), ones added through the API, and any seen on the
status topics, with their latest status; queries of their stored readings; and live
management (admin token only):

- ``POST /devices`` adds a device: a generated password (answered once, never stored by
  the API), a broker credential bound to the device's client id (Mosquitto's
  dynamic-security plugin, no restart), and the client id reserved for it;
- ``POST /devices/<id>/disable`` disconnects it at once and refuses it until
  ``POST /devices/<id>/enable``; ``DELETE /devices/<id>`` removes an added one;
- ``PUT /devices/<id>/config`` publishes its live configuration, retained and versioned,
  on ``{root}/config/devices/<id>``; ``DELETE`` removes it (the agent goes back to its
  file); ``GET`` shows the version wanted and the one the agent reports applied.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import msgspec
from flask import Blueprint, Response, current_app, jsonify, request, url_for
from pydantic import ValidationError

from api.auth import caller, require_admin
from api.body import json_object
from api.broker_admin import BrokerRefused, BrokerUnavailable
from api.db import DeviceRow, DuplicateDevice, TooManyDevices, get_store
from api.names import check_path_names
from api.owners import visible_device
from api.problems import Problem, problem_type
from api.resources import resources
from api.schemas import body
from api.status import device_view, list_devices
from api.validation import parse_history_args, parse_mean_args, reject_args
from vigil.config_core import KeyedError
from vigil.device_config import DeviceConfig, DeviceSettings, decode_device_settings
from vigil.mqtt import PublishError
from vigil.settings import DeviceEntry, validation_error

bp = Blueprint("devices", __name__, url_prefix="/devices")


def _owned() -> None:
    """A route of one device answers only its owner (and an admin): for anyone else it is
    the 404 of a device that does not exist."""
    device = (request.view_args or {}).get("device")
    if isinstance(device, str):
        visible_device(device)


bp.before_request(check_path_names)
bp.before_request(_owned)


def _args() -> dict[str, list[str]]:
    return request.args.to_dict(flat=False)


def _no_data(device: str, metric: str) -> Problem:
    return Problem(404, f"no readings of {metric!r} stored for device {device!r}")


MAX_DEVICE_BODY_BYTES = 64 * 1024


def _rows() -> dict[str, DeviceRow]:
    return {row.id: row for row in get_store().devices()}


def _known(device: str) -> tuple[DeviceEntry | None, DeviceRow | None]:
    """The configured entry and the API's row of ``device``; 404 if it has neither."""
    configured = {d.id: d for d in resources().config.devices}.get(device)
    row = get_store().device(device)
    if configured is None and (row is None or not row.added):
        raise Problem(404, f"device {device!r} is neither configured nor added through the API")
    return configured, row


def _require_admin() -> None:
    require_admin("managing devices")


def _invalid(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("invalid-device"), title="Invalid device")


def _json_body() -> dict[str, Any]:
    return json_object(_invalid, max_bytes=MAX_DEVICE_BODY_BYTES)


def _broker_problem(exc: Exception) -> Problem:
    if isinstance(exc, BrokerRefused):
        return Problem(502, f"the broker's dynamic-security plugin refused: {exc}")
    return Problem(503, f"the broker is unavailable: {exc}", headers={"Retry-After": "5"})


def _view(device: str) -> dict[str, Any]:
    res = resources()
    configured = {d.id: d for d in res.config.devices}
    return device_view(device, configured, res.status.get(device), get_store().device(device))


@bp.get("")
def index() -> dict[str, Any]:
    """Every configured device, every device added through the API and every device seen
    on the status topics, each with its latest status (null until it published one)."""
    reject_args(_args())
    res = resources()
    listed = list_devices(res.config.devices, res.status.all(), _rows())
    if not caller().is_admin:  # a user's own devices (an admin sees all)
        listed = [d for d in listed if d["owner"] == caller().user]
    return {"devices": listed}


@bp.post("")
@body(DeviceEntry)
def add() -> tuple[Response, int]:
    """Add a device: ``{"id", "description"?, "owner"?}`` (the owner: a user, the admin by
    default). The answer holds its password, the only time it is shown."""
    _require_admin()
    reject_args(_args())
    res = resources()
    admin = res.broker_admin
    if not admin.enabled:
        raise Problem(
            409, "devices cannot be added while the broker runs: set api.broker_owners_file"
        )
    try:
        entry = DeviceEntry.model_validate(_json_body())
    except ValidationError as exc:
        key, reason = validation_error(exc)
        raise _invalid(f"{key}: {reason}") from None
    if entry.id in {d.id for d in res.config.devices}:
        raise Problem(409, f"device {entry.id!r} is configured in vigil.yaml already")
    if entry.quotes:
        raise _invalid(
            "quotes: quote agents are configured in vigil.yaml (devices[].quotes), where "
            "ingest and the alert engine read them"
        )
    store = get_store()
    if store.user(entry.owner) is None:
        raise _invalid(f"owner: no user {entry.owner!r}")
    try:
        version = store.add_device(entry.id, entry.description, entry.owner)
    except DuplicateDevice:
        raise Problem(409, f"device {entry.id!r} exists already") from None
    except TooManyDevices as exc:
        raise Problem(409, str(exc)) from None
    password = secrets.token_urlsafe(24)
    try:
        # The id is reserved before the credential exists: nobody else can hold it.
        admin.write_owners(store.added_devices())
        admin.create(entry.id, password)
    except (BrokerUnavailable, BrokerRefused) as exc:
        store.delete_device(entry.id)
        admin.write_owners(store.added_devices())
        raise _broker_problem(exc) from None
    res.publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])  # rules' scopes
    broker = res.config.broker
    body = {
        **_view(entry.id),
        "credentials": {"username": entry.id, "client_id": entry.id, "password": password},
        "broker": {"host": broker.host, "port": broker.port, "topic_root": broker.topic_root},
    }
    resp = jsonify(body)
    resp.headers["Location"] = url_for("devices.get_device", device=entry.id)
    resp.headers["Cache-Control"] = "no-store"  # it holds a password
    return resp, 201


def _set_disabled(device: str, disabled: bool) -> dict[str, Any]:
    _require_admin()
    reject_args(_args())
    _known(device)
    try:
        resources().broker_admin.set_disabled(device, disabled)
    except (BrokerUnavailable, BrokerRefused) as exc:
        raise _broker_problem(exc) from None
    get_store().set_disabled(device, disabled)
    return _view(device)


@bp.post("/<device>/disable")
def disable(device: str) -> dict[str, Any]:
    """Disconnect the device now and refuse it until it is enabled."""
    return _set_disabled(device, True)


@bp.post("/<device>/enable")
def enable(device: str) -> dict[str, Any]:
    """Enable a device disabled before: the broker lets it connect again (admin)."""
    return _set_disabled(device, False)


@bp.delete("/<device>")
def remove(device: str) -> tuple[str, int]:
    """Remove a device added through the API: its credential (connections closed), its
    client id reservation and its live configuration. Stored readings stay."""
    _require_admin()
    reject_args(_args())
    configured, _row = _known(device)
    if configured is not None:
        raise Problem(409, f"device {device!r} is configured in vigil.yaml: remove it there")
    res = resources()
    store = get_store()
    try:
        res.broker_admin.delete(device)
        _publish_config(device, b"")
    except (BrokerUnavailable, BrokerRefused) as exc:
        raise _broker_problem(exc) from None
    store.delete_device(device)
    res.broker_admin.write_owners(store.added_devices())
    res.publisher.push(store.rules_version(), current_app.config["RULES_PUSH_TIMEOUT_S"])
    return "", 204


@bp.get("/<device>")
def get_device(device: str) -> dict[str, Any]:
    """One device; 404 if it is neither configured, added, nor ever seen."""
    reject_args(_args())
    res = resources()
    configured = {d.id: d for d in res.config.devices}
    row = get_store().device(device)
    status = res.status.get(device)
    if device not in configured and status is None and (row is None or not row.added):
        raise Problem(404, f"device {device!r} is not configured and has published no status")
    return device_view(device, configured, status, row)


@bp.get("/<device>/gaps")
def gap_report(device: str) -> dict[str, Any]:
    """The latest gap check of a device: readings neither stored nor explained by its
    status (null until checked: the status must carry first_id and settled_below)."""
    reject_args(_args())
    checker = resources().gap_check
    return {"device": device, "check": checker.report(device) if checker is not None else None}


# -- live configuration -------------------------------------------------------------------
def _publish_config(device: str, payload: bytes) -> bool:
    """Publish (retained) and wait for the broker's acknowledgement; False if it did not
    come in time (paho sends it when the connection is back; the API publishes every
    stored configuration again on each connect)."""
    res = resources()
    topic = res.config.broker.topics.device_config(device)
    try:
        res.mqtt.publish_wait(
            topic, payload, retain=True, timeout=current_app.config["RULES_PUSH_TIMEOUT_S"]
        )
    except PublishError:
        return False
    return True


def _config_view(device: str, row: DeviceRow | None) -> dict[str, Any]:
    status = resources().status.get(device)
    return {
        "device": device,
        "version": row.config_version if row and row.config is not None else None,
        "config": json.loads(row.config) if row and row.config is not None else None,
        "applied_version": status.config_version if status else None,
        "error": (status.config_error or None) if status else None,
    }


@bp.get("/<device>/config")
def get_config(device: str) -> dict[str, Any]:
    """The live configuration wanted (null: none, the agent's file) and what the agent
    reports: the version applied, or why the latest was rejected."""
    reject_args(_args())
    _configured, row = _known(device)
    return _config_view(device, row)


@bp.put("/<device>/config")
@body(DeviceSettings)
def put_config(device: str) -> Response:
    """Replace the live configuration: any of ``interval_s``, ``batch_max``, ``sensors``,
    ``tickers`` (left out: as the agent's file says)."""
    _require_admin()
    reject_args(_args())
    _known(device)
    try:
        settings = decode_device_settings(_json_body())
    except KeyedError as exc:
        raise _invalid(f"{exc.key}: {exc.reason}") from None
    res = resources()
    if device in res.config.quote_agents:  # a quote agent's tickers are the API's assignment
        settings = msgspec.structs.replace(settings, tickers=res.tickers.tickers_of(device))
    store = get_store()
    version = store.set_device_config(device, settings.to_json().decode())
    live = DeviceConfig(device=device, version=version, **settings.given())
    pushed = _publish_config(device, live.encode())
    resp = jsonify({**_config_view(device, store.device(device)), "pushed": pushed})
    resp.headers["Vigil-Config-Pushed"] = "true" if pushed else "false"
    return resp


@bp.delete("/<device>/config")
def delete_config(device: str) -> Response:
    """Remove the live configuration: the agent goes back to its own file."""
    _require_admin()
    reject_args(_args())
    _known(device)
    store = get_store()
    store.set_device_config(device, None)
    pushed = _publish_config(device, b"")
    resources().tickers.poke()  # a quote agent gets its tickers back
    resp = jsonify({**_config_view(device, store.device(device)), "pushed": pushed})
    resp.headers["Vigil-Config-Pushed"] = "true" if pushed else "false"
    return resp


@bp.get("/<device>/metrics")
def metrics(device: str) -> dict[str, Any]:
    """The metrics stored for the device (a share price's symbols are tags of ``price``,
    not metrics), and ``unreachable``: the servers that did not answer, whose metrics may
    be missing from the list. 404 for a device with none."""
    reject_args(_args())
    found, missed = resources().storage.metrics_of(device)
    if not found and not missed:
        raise Problem(404, f"no readings stored for device {device!r}")
    return {"device": device, "metrics": found, "unreachable": missed}


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
