"""Alert rules: list, create, read, replace (PUT), change (PATCH, e.g. ``{"enabled":
false}``), delete. Each rule has an owner: a user sees and deletes
only their own (another user's rule is the 404 of one that does not exist), an admin every
rule. Rules live in the API database; after every
change the whole rule set is published as the retained snapshot the alert engine follows
(see :mod:`api.rules_sync`). Answers to changes say whether the broker acknowledged it
(``pushed``, also in the ``Vigil-Rules-Pushed`` header) and the rule-set version.

A stored row that is no longer a valid rule (saved by an older version, e.g. the id
``"r\n"``) does not break the list: ``GET /rules`` shows it under ``invalid`` with the reason
and the URL that deletes it, ``GET /rules/<id>`` answers 409 with the reason, and
``DELETE /rules/<id>`` removes it. Those two take such a stored id even though it is not a
valid name; any other id that is not a name is a 400.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from api.auth import caller
from api.body import check_declared
from api.db import DuplicateRule, InvalidStoredRule, StoredRules, TooManyRules, get_store
from api.names import check_view_args
from api.owners import visible_device
from api.problems import Problem, problem_type
from api.resources import resources
from api.schemas import RuleBody, body
from api.validation import check_path_name, reject_args, rule_id_from_name, shown
from vigil.jsonin import JsonInputError, loads
from vigil.messages import RULE_COMMON_FIELDS, InvalidMessage, Rule

bp = Blueprint("rules", __name__, url_prefix="/rules")
MAX_RULE_BODY_BYTES = 64 * 1024
#: Views that check ``rule_id`` themselves: they also take the id of an invalid stored row.
_STORED_ID_VIEWS = frozenset({"rules.get_rule", "rules.delete", "rules.replace", "rules.patch"})
_SURROGATE = re.compile("[\ud800-\udfff]")


@bp.before_request
def _check_request() -> None:
    """After authentication: path names (but a stored id the view looks up) and no query
    parameters (none of these routes takes any)."""
    skip = ("rule_id",) if request.endpoint in _STORED_ID_VIEWS else ()
    check_view_args(request.endpoint, request.view_args, skip)
    reject_args(request.args.to_dict(flat=False))


def _invalid_rule(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("invalid-rule"), title="Invalid rule")


def _scope() -> str | None:
    """Whose rules the caller sees and changes: their own; an admin's, everyone's."""
    who = caller()
    return None if who.is_admin else who.user


def _owner_of_new(body: dict[str, Any]) -> str:
    """The owner of a rule being created: the caller, or (an admin only) ``owner``."""
    who = caller()
    owner = body.pop("owner", who.user)
    if owner == who.user:
        return who.user
    if not who.is_admin:
        raise Problem(403, "creating rules for another user needs an admin token")
    if not isinstance(owner, str) or get_store().user(owner) is None:
        raise _invalid_rule(f"owner: no user {shown(str(owner))}")
    return owner


def _rule_object() -> dict[str, Any]:
    if not request.is_json:
        raise Problem(415, "send the rule as a JSON object with 'Content-Type: application/json'")
    try:
        body = loads(request.get_data(cache=True), max_bytes=MAX_RULE_BODY_BYTES)
    except JsonInputError as exc:
        raise _invalid_rule(f"the body is not valid JSON: {exc.reason}") from None
    if not isinstance(body, dict):
        raise _invalid_rule("the body must be a JSON object")
    check_declared(body, _invalid_rule)
    return body


def _validated(body: dict[str, Any]) -> Rule:
    """The rule, and a device it names is one the caller may see (a pattern, or every
    device, only ever watches its owner's: the snapshot scopes it)."""
    try:
        rule = Rule.from_dict(body)
    except InvalidMessage as exc:
        raise _invalid_rule(exc.reason) from None
    if rule.device is not None and not rule.is_pattern:
        visible_device(rule.device)
    return rule


def parse_rule_body() -> tuple[Rule, str]:
    """The rule in the request body and its owner; the id defaults to one derived from the
    name."""
    body = _rule_object()
    owner = _owner_of_new(body)
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
    return _validated(body), owner


def _push(version: int) -> bool:
    return resources().publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])


def _sync_headers(resp: Response, version: int, pushed: bool) -> Response:
    resp.headers["Vigil-Rules-Version"] = str(version)
    resp.headers["Vigil-Rules-Pushed"] = "true" if pushed else "false"
    return resp


def _href(rule_id: str) -> str | None:
    """The URL of a stored rule, or None if its id cannot be a path segment (empty, holding
    "/", or bytes that are not UTF-8): such a row can only be removed in the database."""
    if not rule_id or "/" in rule_id or _SURROGATE.search(rule_id):
        return None
    return url_for("rules.delete", rule_id=rule_id)


def _invalid_view(bad: InvalidStoredRule, owner: str | None) -> dict[str, Any]:
    return {"id": bad.id, "owner": owner, "reason": bad.reason, "href": _href(bad.id)}


def rule_view(rule: Rule, owner: str | None) -> dict[str, Any]:
    return {**rule.to_dict(), "owner": owner}


def _no_rule(rule_id: str) -> Problem:
    """404 for a valid id without a rule; 400 (InvalidParameter) for an id that is no name."""
    check_path_name("rule_id", rule_id)
    return Problem(404, f"no rule with id {rule_id!r}")


@bp.get("")
def index() -> dict[str, Any]:
    """Every rule, with the rule-set version and whether the broker has it; ``invalid``
    lists stored rows that are no longer valid rules (left out of the published set)."""
    snap = get_store().snapshot()
    mine = StoredRules(snap.rules, snap.invalid, snap.owners).of(_scope())
    published = resources().publisher.published_version
    return {
        "rules": [rule_view(r, mine.owners.get(r.id)) for r in mine.rules],
        "invalid": [_invalid_view(bad, mine.owners.get(bad.id)) for bad in mine.invalid],
        "version": snap.version,
        "pushed": published is not None and published >= snap.version,
    }


@bp.post("")
@body(RuleBody)
def create() -> tuple[Response, int]:
    """Create a rule (validated like the alert engine validates it); 409 if the id is
    taken; 201 with its Location. The rule is saved even if the broker is down: then
    ``pushed`` is false and the snapshot goes out when the connection is back."""
    rule, owner = parse_rule_body()
    try:
        version = get_store().add_rule(rule, owner)
    except DuplicateRule:
        raise Problem(
            409,
            f"rule {rule.id!r} already exists; delete it first or choose another id",
            type_=problem_type("duplicate-rule"),
            rule_id=rule.id,
        ) from None
    except TooManyRules as exc:
        raise Problem(
            409,
            f"{exc}; delete rules before adding more",
            type_=problem_type("too-many-rules"),
            limit=exc.limit,
        ) from None
    pushed = _push(version)
    resp = jsonify({"rule": rule_view(rule, owner), "version": version, "pushed": pushed})
    resp.headers["Location"] = url_for("rules.get_rule", rule_id=rule.id)
    return _sync_headers(resp, version, pushed), 201


def _stored(rule_id: str) -> Rule:
    """The caller's valid stored rule ``rule_id``: 404 if there is none (or it is another
    user's), 409 if the stored row is not a valid rule."""
    rule = get_store().get_rule(rule_id, _scope())
    if rule is None:
        raise _no_rule(rule_id)
    if isinstance(rule, InvalidStoredRule):
        raise Problem(
            409,
            f"the rule stored as {shown(rule.id)} is not valid: {rule.reason}; it is left out "
            "of the rule set the alert engine gets: DELETE it and create it again",
            type_=problem_type("invalid-stored-rule"),
            title="Invalid stored rule",
            rule_id=rule.id,
        )
    return rule


def _replaced(rule_id: str, body: dict[str, Any]) -> Response:
    if body.get("id", rule_id) != rule_id:
        raise _invalid_rule(f"id: the body names {shown(str(body['id']))}, the path {rule_id!r}")
    if "owner" in body:
        raise _invalid_rule("owner: a rule's owner cannot change; create it for the other user")
    rule = _validated({**body, "id": rule_id})
    store = get_store()
    version = store.replace_rule(rule, _scope())
    if version is None:
        raise _no_rule(rule_id)
    pushed = _push(version)
    resp = jsonify(
        {"rule": rule_view(rule, store.rule_owner(rule_id)), "version": version, "pushed": pushed}
    )
    return _sync_headers(resp, version, pushed)


@bp.get("/<rule_id>")
def get_rule(rule_id: str) -> dict[str, Any]:
    """One rule; 404 if there is none with this id, 409 if the stored row is not a valid
    rule (the detail says why; delete it)."""
    return rule_view(_stored(rule_id), get_store().rule_owner(rule_id))


@bp.put("/<rule_id>")
@body(RuleBody)
def replace(rule_id: str) -> Response:
    """Replace a rule whole (fields left out take their defaults); the id stays. A firing
    alert the new rule no longer covers resolves. A stored row that is no longer a valid
    rule can be replaced too."""
    if get_store().get_rule(rule_id, _scope()) is None:
        raise _no_rule(rule_id)
    return _replaced(rule_id, _rule_object())


@bp.patch("/<rule_id>")
@body(RuleBody)
def patch(rule_id: str) -> Response:
    """Change some fields of a rule (JSON merge: the fields given replace the stored ones),
    e.g. ``{"enabled": false}`` to disable it (its firing alerts resolve). A change of
    ``kind`` keeps only the fields every kind has: give the new kind's own."""
    current = _stored(rule_id).to_dict()
    change = _rule_object()
    if change.get("kind", current["kind"]) != current["kind"]:
        current = {k: v for k, v in current.items() if k in RULE_COMMON_FIELDS}
    return _replaced(rule_id, {**current, **change})


@bp.delete("/<rule_id>")
def delete(rule_id: str) -> Response:
    """Delete a rule, valid or not: 204, or 404 if there is none with this id."""
    version = get_store().delete_rule(rule_id, _scope())
    if version is None:
        raise _no_rule(rule_id)
    pushed = _push(version)
    return _sync_headers(current_app.response_class(status=204), version, pushed)
