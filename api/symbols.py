"""Share symbols users follow (:mod:`vigil.symbols`, :mod:`api.ticker_sync`).

- ``GET/PUT /users/<user>/subscriptions`` ``{"symbols": [...]}``: the symbols the user
  follows (at most ``MAX_SUBSCRIPTIONS``); the admin, or the user themself (another user's
  is the 404 of a user that does not exist). A PUT pushes the change to the quote agents at
  once and answers with the agent each symbol is assigned to.
- ``GET /symbols``: the followed symbols with their follower count and agent (a user: the
  ones they follow; the admin: all, with the followers' names).
- ``GET /symbols/<symbol>/latest``: the newest stored quote of a symbol (404, naming it,
  for a symbol with none).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.auth import caller
from api.body import json_object
from api.db import get_store
from api.problems import Problem, problem_type
from api.resources import resources
from api.schemas import Subscriptions, body
from api.users import visible_user
from api.validation import reject_args
from vigil.symbols import PRICE_METRIC, InvalidSymbol, check_symbol, series_device

bp = Blueprint("symbols", __name__)

MAX_SUBSCRIPTIONS = 100


def _invalid(detail: str) -> Problem:
    return Problem(
        400, detail, type_=problem_type("invalid-subscriptions"), title="Invalid subscriptions"
    )


def _view(user: str) -> dict[str, Any]:
    assigned = resources().tickers.assigned()
    symbols = get_store().subscriptions(user)
    return {"user": user, "symbols": symbols, "agents": {s: assigned.get(s) for s in symbols}}


@bp.get("/users/<user>/subscriptions")
def subscriptions(user: str) -> dict[str, Any]:
    """The symbols the user follows, each with the agent fetching it (null: none yet)."""
    reject_args(request.args.to_dict(flat=False))
    visible_user(user)
    return _view(user)


@bp.put("/users/<user>/subscriptions")
@body(Subscriptions)
def set_subscriptions(user: str) -> Response:
    """Replace the symbols the user follows: ``{"symbols": ["AAPL", "ENI.MI"]}``."""
    reject_args(request.args.to_dict(flat=False))
    visible_user(user)
    body = json_object(_invalid, allowed=("symbols",))
    symbols = body.get("symbols")
    if not isinstance(symbols, list) or len(symbols) > MAX_SUBSCRIPTIONS:
        raise _invalid(f"symbols: must be a list of at most {MAX_SUBSCRIPTIONS} ticker symbols")
    try:
        checked = sorted({check_symbol(s, f"symbols[{i}]") for i, s in enumerate(symbols)})
    except InvalidSymbol as exc:
        raise _invalid(str(exc)) from None
    get_store().set_subscriptions(user, checked)
    res = resources()
    res.tickers.sync()
    res.tickers.poke()  # and the clean-up, off the request
    return jsonify(_view(user))


@bp.get("/symbols")
def index() -> dict[str, Any]:
    """The symbols followed (by the caller; by anyone for the admin)."""
    reject_args(request.args.to_dict(flat=False))
    who = caller()
    assigned = resources().tickers.assigned()
    out = []
    for symbol, followers in get_store().followed().items():
        if not who.is_admin and who.user not in followers:
            continue
        view: dict[str, Any] = {
            "symbol": symbol,
            "followers": len(followers),
            "agent": assigned.get(symbol),
            "stored_as": {"device": series_device(symbol), "metric": PRICE_METRIC},
        }
        if who.is_admin:
            view["followed_by"] = followers
        out.append(view)
    return {"symbols": out}


@bp.get("/symbols/<symbol>/latest")
def latest(symbol: str) -> dict[str, Any]:
    """The newest stored quote of ``symbol``."""
    reject_args(request.args.to_dict(flat=False))
    try:
        checked = check_symbol(symbol)
    except InvalidSymbol as exc:
        raise Problem(400, str(exc), parameter="symbol") from None
    point = resources().storage.latest(series_device(checked), PRICE_METRIC)
    if point is None:
        raise Problem(
            404,
            f"no quotes stored for symbol {checked!r}: follow it (PUT "
            "/users/<user>/subscriptions) and a quote agent fetches it",
        )
    return {"symbol": checked, "ts": point.ts, "value": point.value, "id": point.id}
