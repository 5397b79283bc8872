"""A request's JSON object body, read totally: any bytes give a dict or a problem."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from flask import current_app, request

from api.problems import Problem
from api.schemas import body_of, check_body
from vigil.jsonin import JsonInputError, loads

MAX_BODY_BYTES = 64 * 1024


def json_object(
    invalid: Callable[[str], Problem],
    *,
    allowed: Collection[str] | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> dict[str, Any]:
    """The body as a JSON object: 415 if it is not sent as JSON, ``invalid(detail)`` if it
    does not parse, is not an object, holds another key than ``allowed`` or does not fit
    the Struct the view declares (:func:`api.schemas.body`)."""
    if not request.is_json:
        raise Problem(415, "send a JSON object with 'Content-Type: application/json'")
    try:
        body = loads(request.get_data(cache=True), max_bytes=max_bytes)
    except JsonInputError as exc:
        raise invalid(f"the body is not valid JSON: {exc.reason}") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    if allowed is not None:
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            known = ", ".join(sorted(allowed))
            raise invalid(f"unknown field {unknown[0]!r} (allowed: {known})")
    check_declared(body, invalid)
    return body


def check_declared(body: dict[str, Any], invalid: Callable[[str], Problem]) -> None:
    """``invalid(detail)`` if ``body`` does not fit the Struct this request's view declares."""
    view = current_app.view_functions.get(request.endpoint or "")
    schema = body_of(view) if view is not None else None
    if schema is not None and (why := check_body(schema, body)) is not None:
        raise invalid(why)
