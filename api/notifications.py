"""A user's notification history: ``GET /notifications`` (filters, pages) and
``GET /notifications/<id>``, from the delivery records the notifier retains
(:mod:`api.notification_board`). Each record: the alert transitions it carried, the channel
and target, its delivery state (pending, sent, failed, skipped), attempts and times. A user
sees their own; the admin every user's (filter ``owner``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from api.auth import caller
from api.names import check_path_names
from api.problems import Problem
from api.resources import resources
from api.validation import parse_page_args, reject_args
from vigil.messages import CHANNELS, NOTIFICATION_STATES, Notification
from vigil.text import shown

bp = Blueprint("notifications", __name__, url_prefix="/notifications")
bp.before_request(check_path_names)

FILTERS: dict[str, tuple[str, ...] | None] = {
    "channel": CHANNELS,
    "state": NOTIFICATION_STATES,
    "rule_id": None,
    "device": None,
    "owner": None,
}


def _matches(n: Notification, filters: dict[str, str]) -> bool:
    for name, value in filters.items():
        if name in ("channel", "state", "owner"):
            if getattr(n, name) != value:
                return False
        elif not any(getattr(a, name) == value for a in n.alerts):
            return False
    return True


@bp.get("")
def index() -> dict[str, Any]:
    """The caller's notifications, the newest first: ``channel``, ``state``, ``rule_id``,
    ``device`` (and, for the admin, ``owner``) filter; ``limit`` and ``offset`` page."""
    q = parse_page_args(request.args.to_dict(flat=False), FILTERS)
    who = caller()
    filters = dict(q.filters)
    if not who.is_admin:
        if filters.get("owner", who.user) != who.user:
            raise Problem(404, f"no notifications of {shown(filters['owner'])}")
        filters["owner"] = who.user
    chosen = [n for n in resources().notifications.all() if _matches(n, filters)]
    page = chosen[q.offset : q.offset + q.limit]
    more = q.offset + len(page) < len(chosen)
    return {
        "notifications": [n.to_dict() for n in page],
        "total": len(chosen),
        "limit": q.limit,
        "offset": q.offset,
        "next_offset": q.offset + len(page) if more else None,
    }


@bp.get("/<notification_id>")
def one(notification_id: str) -> dict[str, Any]:
    """One notification of the caller's (another user's is a 404)."""
    reject_args(request.args.to_dict(flat=False))
    who = caller()
    n = resources().notifications.get(notification_id)
    if n is None or not (who.is_admin or n.owner == who.user):
        raise Problem(404, f"no notification {shown(notification_id)}")
    return n.to_dict()
