"""Alert rules: list, create, read, delete. Rules live in the API database; after every
change the whole rule set is published as the retained snapshot the alert engine follows
(see :mod:`api.rules_sync`). Answers to changes say whether the broker acknowledged it
(``pushed``, also in the ``Vigil-Rules-Pushed`` header) and the rule-set version.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from api.db import DuplicateRule, get_store
from api.names import check_view_args
from api.problems import Problem, problem_type
from api.resources import resources
from api.validation import rule_id_from_name
from vigil.jsonin import JsonInputError, loads
from vigil.messages import InvalidMessage, Rule

bp = Blueprint("rules", __name__, url_prefix="/rules")
MAX_RULE_BODY_BYTES = 64 * 1024
bp.url_value_preprocessor(check_view_args)


def _invalid_rule(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("invalid-rule"), title="Invalid rule")


def parse_rule_body() -> Rule:
    """The rule in the request body; the id defaults to one derived from the name."""
    if not request.is_json:
        raise Problem(415, "send the rule as a JSON object with 'Content-Type: application/json'")
    try:
        body = loads(request.get_data(cache=True), max_bytes=MAX_RULE_BODY_BYTES)
    except JsonInputError as exc:
        raise _invalid_rule(f"the body is not valid JSON: {exc.reason}") from None
    if not isinstance(body, dict):
        raise _invalid_rule("the body must be a JSON object")
    if "id" not in body:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _invalid_rule(
                "rule is missing required field 'id' (or a 'name' to derive it from)"
            )
        try:
            body = {**body, "id": rule_id_from_name(name)}
        except ValueError as exc:
            raise _invalid_rule(f"{exc}; give an 'id'") from None
    try:
        return Rule.from_dict(body)
    except InvalidMessage as exc:
        raise _invalid_rule(exc.reason) from None


def _push(version: int) -> bool:
    return resources().publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])


def _sync_headers(resp: Response, version: int, pushed: bool) -> Response:
    resp.headers["Vigil-Rules-Version"] = str(version)
    resp.headers["Vigil-Rules-Pushed"] = "true" if pushed else "false"
    return resp


@bp.get("")
def index() -> dict[str, Any]:
    """Every rule, with the rule-set version and whether the broker has it."""
    store = get_store()
    version, _changed_at, rules = store.snapshot()
    published = resources().publisher.published_version
    return {
        "rules": [r.to_dict() for r in rules],
        "version": version,
        "pushed": published is not None and published >= version,
    }


@bp.post("")
def create() -> tuple[Response, int]:
    """Create a rule (validated like the alert engine validates it); 409 if the id is
    taken; 201 with its Location. The rule is saved even if the broker is down: then
    ``pushed`` is false and the snapshot goes out when the connection is back."""
    rule = parse_rule_body()
    try:
        version = get_store().add_rule(rule)
    except DuplicateRule:
        raise Problem(
            409,
            f"rule {rule.id!r} already exists; delete it first or choose another id",
            type_=problem_type("duplicate-rule"),
            rule_id=rule.id,
        ) from None
    pushed = _push(version)
    resp = jsonify({"rule": rule.to_dict(), "version": version, "pushed": pushed})
    resp.headers["Location"] = url_for("rules.get_rule", rule_id=rule.id)
    return _sync_headers(resp, version, pushed), 201


@bp.get("/<rule_id>")
def get_rule(rule_id: str) -> dict[str, Any]:
    """One rule; 404 if there is none with this id."""
    rule = get_store().get_rule(rule_id)
    if rule is None:
        raise Problem(404, f"no rule with id {rule_id!r}")
    return rule.to_dict()


@bp.delete("/<rule_id>")
def delete(rule_id: str) -> Response:
    """Delete a rule: 204, or 404 if there is none with this id."""
    version = get_store().delete_rule(rule_id)
    if version is None:
        raise Problem(404, f"no rule with id {rule_id!r}")
    pushed = _push(version)
    return _sync_headers(current_app.response_class(status=204), version, pushed)
