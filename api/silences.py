"""Silences: mute the alerts that match, for a time (Alertmanager's silences).

- ``POST /silences`` ``{"matchers": {label: pattern}, "duration_s" | "ends_at",
  "starts_at"?, "comment"?}`` creates one (201). Labels: device, rule_id, severity, kind,
  symbol, metric; patterns are shell-style (``dev-*``); every matcher must match. Times are
  epoch milliseconds; ``starts_at`` defaults to now.
- ``GET /silences`` (``state`` = pending|active|expired, ``limit``, ``offset``),
  ``GET /silences/<id>``.
- ``DELETE /silences/<id>`` expires it at once (it stays listed, expired) and answers it.

A user's silence mutes that user's alerts; the admin's mute everyone's. A user sees and
expires only their own (another's is a 404); the admin sees all. Each change is pushed to the
notifier in the rule-set snapshot (``version``, ``pushed``); the notifier applies the time
bounds itself, so a silence starts and ends on time without another push.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from api.auth import caller
from api.body import json_object
from api.db import get_store
from api.names import check_path_names
from api.problems import Problem, problem_type
from api.resources import resources
from api.schemas import SilenceBody, body
from api.validation import parse_page_args, reject_args
from vigil.messages import (
    MAX_SILENCE_COMMENT,
    MAX_SILENCES,
    MAX_TS_MS,
    InvalidMessage,
    Silence,
    check_matchers,
    now_ms,
)
from vigil.text import shown

bp = Blueprint("silences", __name__, url_prefix="/silences")
bp.before_request(check_path_names)
#: the longest a silence may last
MAX_DURATION_S = 366 * 86_400
STATES = ("pending", "active", "expired")


def _invalid(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("invalid-silence"), title="Invalid silence")


def view(s: Silence, now: int) -> dict[str, Any]:
    return {**s.to_dict(), "state": s.state(now)}


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(f"{key}: must be a number, got {shown(value)}")
    return float(value)


def _time(body: dict[str, Any], key: str) -> int | None:
    value = _number(body, key)
    if value is None:
        return None
    if not 0 <= value <= MAX_TS_MS or not float(value).is_integer():
        raise _invalid(f"{key}: must be a time in epoch milliseconds, got {shown(body[key])}")
    return int(value)


def parse_silence(body: dict[str, Any], owner: str, now: int) -> Silence:
    """A new silence of ``owner`` from a request body; Problem 400 says what is wrong."""
    try:
        matchers = check_matchers(body.get("matchers"), "matchers")
    except InvalidMessage as exc:
        raise _invalid(exc.reason) from None
    comment = body.get("comment", "")
    if not isinstance(comment, str) or len(comment) > MAX_SILENCE_COMMENT:
        raise _invalid(f"comment: must be text of at most {MAX_SILENCE_COMMENT} characters")
    starts = _time(body, "starts_at")
    starts = now if starts is None else starts
    ends = _time(body, "ends_at")
    duration = _number(body, "duration_s")
    if (ends is None) == (duration is None):
        raise _invalid("give exactly one of duration_s (seconds) and ends_at (epoch ms)")
    if duration is not None:
        if not 0 < duration <= MAX_DURATION_S:
            raise _invalid(f"duration_s: must be more than 0 and at most {MAX_DURATION_S}")
        ends = starts + round(duration * 1000)
    assert ends is not None
    if ends <= max(starts, now):
        raise _invalid("ends_at: must be after starts_at and in the future")
    if ends - starts > MAX_DURATION_S * 1000:
        raise _invalid(f"a silence lasts at most {MAX_DURATION_S} s")
    silence = Silence(
        id="s-" + secrets.token_hex(8),
        owner=owner,
        matchers=matchers,
        starts_at=starts,
        ends_at=ends,
        comment=comment,
        created_at=now,
    )
    try:  # what the notifier will check: it must accept what the API stores
        return Silence.from_dict(silence.to_dict())
    except InvalidMessage as exc:
        raise _invalid(exc.reason) from None


def _own(silence_id: str) -> Silence:
    who = caller()
    silence = get_store().get_silence(silence_id, None if who.is_admin else who.user)
    if silence is None:
        raise Problem(404, f"no silence {shown(silence_id)}")
    return silence


def _pushed(version: int) -> bool:
    return resources().publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])


@bp.post("")
@body(SilenceBody)
def create() -> tuple[Response, int, dict[str, str]]:
    """Mute matching alerts for a time.

    ``{"matchers", "duration_s" or "ends_at", "starts_at"?, "comment"?}``: a user's silence
    mutes that user's alerts, the admin's everyone's."""
    reject_args(request.args.to_dict(flat=False))
    body = json_object(
        _invalid, allowed=("matchers", "duration_s", "ends_at", "starts_at", "comment")
    )
    now = now_ms()
    silence = parse_silence(body, caller().user, now)
    store = get_store()
    if store.count_silences(now) >= MAX_SILENCES:
        raise Problem(409, f"at most {MAX_SILENCES} silences may be pending or active at once")
    version = store.put_silence(silence)
    out = {**view(silence, now), "version": version, "pushed": _pushed(version)}
    location = url_for("silences.one", silence_id=silence.id)
    return jsonify(out), 201, {"Location": location}


@bp.get("")
def index() -> dict[str, Any]:
    """The caller's silences (the admin: everyone's), the newest first."""
    q = parse_page_args(request.args.to_dict(flat=False), {"state": STATES})
    who = caller()
    now = now_ms()
    every = get_store().silences(None if who.is_admin else who.user)
    chosen = [s for s in every if "state" not in q.filters or s.state(now) == q.filters["state"]]
    page = chosen[q.offset : q.offset + q.limit]
    more = q.offset + len(page) < len(chosen)
    return {
        "silences": [view(s, now) for s in page],
        "total": len(chosen),
        "limit": q.limit,
        "offset": q.offset,
        "next_offset": q.offset + len(page) if more else None,
    }


@bp.get("/<silence_id>")
def one(silence_id: str) -> dict[str, Any]:
    """One of the caller's silences (another user's is a 404)."""
    reject_args(request.args.to_dict(flat=False))
    return view(_own(silence_id), now_ms())


@bp.delete("/<silence_id>")
def expire(silence_id: str) -> dict[str, Any]:
    """Expire the silence now (one already expired is answered as it is)."""
    reject_args(request.args.to_dict(flat=False))
    silence = _own(silence_id)
    now = now_ms()
    if silence.state(now) == "expired":
        return {**view(silence, now), "version": None, "pushed": True}
    ended = Silence(
        id=silence.id,
        owner=silence.owner,
        matchers=silence.matchers,
        starts_at=min(silence.starts_at, now),
        ends_at=now,
        comment=silence.comment,
        created_at=silence.created_at,
    )
    version = get_store().put_silence(ended)
    return {**view(ended, now), "version": version, "pushed": _pushed(version)}
