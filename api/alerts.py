"""The alerts firing now: ``GET /alerts`` (filters, pages), from the board
(:mod:`api.alert_board`) the retained states on ``{root}/firing/#`` feed. A user sees the
alerts of their own rules; an admin every alert.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from api.auth import caller
from api.db import get_store
from api.resources import resources
from api.validation import parse_page_args
from vigil.messages import RULE_KINDS, SEVERITIES

bp = Blueprint("alerts", __name__, url_prefix="/alerts")


@bp.get("")
def index() -> dict[str, Any]:
    """The alerts firing now, the newest first: ``device``, ``rule_id``, ``severity`` and
    ``kind`` filter; ``limit`` (1..1000, default 100) and ``offset`` page. A user sees the
    alerts of their own rules, an admin every one."""
    q = parse_page_args(
        request.args.to_dict(flat=False),
        {"device": None, "rule_id": None, "severity": SEVERITIES, "kind": RULE_KINDS},
    )
    who = caller()
    owners = get_store().snapshot().owners
    alerts = [
        a
        for a in resources().alerts.firing()
        if (who.is_admin or owners.get(a.rule_id) == who.user)
        and all(getattr(a, name) == value for name, value in q.filters.items())
    ]
    page = alerts[q.offset : q.offset + q.limit]
    more = q.offset + len(page) < len(alerts)
    return {
        "alerts": [{**a.to_dict(), "owner": owners.get(a.rule_id)} for a in page],
        "total": len(alerts),
        "limit": q.limit,
        "offset": q.offset,
        "next_offset": q.offset + len(page) if more else None,
    }
