"""``POST /ingest``: readings over HTTP (seed 004's clients), in the MQTT payload's format
(one reading, or a batch ``{"device", "readings": [...]}``), through the same validation
(``vigil.messages.parse_readings``) and storage as ingest. A 2xx means stored at the
configured consistency; a retry stores nothing twice (a point's identity is its device,
metric, time and id, as on MQTT).

- The admin's token writes for any device, a user's for the user's own devices.
- An unknown device, or another user's: 404; a disabled one: 403.
- An invalid payload: 400 with the reason (what the dead-letter topic would say).
- A server that refused some readings: 422 naming each (the others are stored).
- Not enough replicas up to store it as configured: 503 (retry: nothing is doubled).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from api.db import get_store
from api.owners import may_see
from api.problems import Problem, problem_type
from api.resources import resources
from api.validation import reject_args
from storage_nodes import StorageError
from vigil.jsonin import JsonInputError, loads
from vigil.lineproto_in import parse_line_protocol_write
from vigil.messages import MAX_PAYLOAD_BYTES, InvalidMessage, parse_readings
from vigil.names import is_name
from vigil.symbols import is_quote_device
from vigil.text import shown

bp = Blueprint("ingest", __name__)


def _invalid(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("invalid-readings"), title="Invalid readings")


def check_writable(device: str) -> None:
    """A Problem unless this request's caller may write readings for ``device``: a user
    for their own devices (404 for another's, as for one that does not exist), 403 for a
    disabled device."""
    if not may_see(device) or is_quote_device(device):  # a user writes for their own devices
        raise Problem(404, f"no device {device!r}")
    configured = any(d.id == device for d in resources().config.devices)
    row = get_store().device(device)
    if not configured and (row is None or not row.added):
        raise Problem(404, f"device {device!r} is neither configured nor added through the API")
    if row is not None and row.disabled:
        raise Problem(403, f"device {device!r} is disabled")


def writable_readings(body: bytes, scale_ns: int) -> tuple[int, str]:
    """Store an InfluxDB ``/write`` body (line protocol, each line's device from its tag
    ``device`` or ``host``) as POST /ingest stores readings: (204, "") once stored at the
    configured consistency, else InfluxDB's status and message. Nothing is stored unless
    the caller may write for every device the body names."""
    try:
        readings = parse_line_protocol_write(body, scale_ns)
    except InvalidMessage as exc:
        return 400, f"unable to parse points: {exc.reason}"
    for device in sorted({r.device for r in readings}):
        try:
            check_writable(device)
        except Problem as exc:
            return (403 if exc.status == 404 else exc.status), str(exc.detail)
    try:
        rejected = resources().storage.write(readings)
    except StorageError as exc:
        return 503, f"not stored, retry (nothing is stored twice): {exc}"
    if rejected:
        listed = "; ".join(
            f"{r.reading.metric} of {r.reading.device}: {r.reason}" for r in rejected[:10]
        )
        return 400, f"partial write: {len(rejected)} of {len(readings)} field(s) refused: {listed}"
    return 204, ""


@bp.post("/ingest")
def ingest() -> dict[str, Any]:
    """Store readings sent over HTTP: the MQTT payload's format; 2xx once stored."""
    reject_args(request.args.to_dict(flat=False))
    if not request.is_json:
        raise Problem(415, "send the readings as JSON with 'Content-Type: application/json'")
    payload = request.get_data(cache=True)
    try:
        obj = loads(payload, max_bytes=MAX_PAYLOAD_BYTES)
    except JsonInputError as exc:
        raise _invalid(f"payload is not valid JSON: {exc.reason}") from None
    device = obj.get("device") if isinstance(obj, dict) else None
    if not is_name(device):
        raise _invalid(f"device {shown(device)} is missing or not a valid device id")
    assert isinstance(device, str)
    check_writable(device)
    try:
        readings = parse_readings(payload, device, resources().config.quote_agents)
    except InvalidMessage as exc:
        raise _invalid(exc.reason) from None
    rejected = resources().storage.write(readings)
    if rejected:
        listed = "; ".join(f"reading {r.reading.id}: {r.reason}" for r in rejected[:10])
        raise Problem(
            422,
            f"{len(rejected)} of {len(readings)} reading(s) refused by the storage servers "
            f"(the others are stored): {listed}",
            type_=problem_type("readings-refused"),
            title="Readings refused",
        )
    return {"device": device, "stored": len(readings), "ids": [r.id for r in readings]}
