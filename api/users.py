"""Users, their roles and their tokens.

- ``GET /me``: who the token belongs to.
- ``GET /users`` (admin): every user. ``POST /users`` (admin) ``{"name", "role"?}`` creates
  one (role ``user`` by default) and answers its first token, the only time it is shown.
- ``GET /users/<user>``: the admin, or the user themself. ``PATCH /users/<user>``
  ``{"role"}`` (admin). ``DELETE /users/<user>`` (admin) removes the user, their tokens
  and their rules (the new rule set is pushed).
- ``GET /users/<user>/tokens``, ``POST`` (``{"label"?}``, the token answered once) and
  ``DELETE /users/<user>/tokens/<token_id>``: the admin, or the user themself.
- ``GET/PUT /users/<user>/recipients`` ``{"emails": [...]}``: where the user's alerts are
  emailed; the admin, or the user themself.
- ``GET/PUT /users/<user>/webhooks`` ``{"webhooks": [{"name", "url", "secret"?}]}``: where
  the user's notifications are POSTed, signed; the admin, or the user themself.
- ``GET/PUT /users/<user>/telegram`` ``{"chat_id"}``: the Telegram chat they go to.
- ``GET/PUT /users/<user>/templates`` ``{"subject"?, "text"?, "html"?}``: the user's own
  email templates (sandboxed Jinja2).

A user who is not an admin learns nothing of other users: any other user's path is the
404 a user that does not exist gets, so names cannot be probed. Only an admin changes roles
or removes users; the user ``admin`` (the admin token file's) can be neither demoted nor
removed.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from api.auth import caller, hash_token, new_token, require_admin
from api.body import json_object
from api.db import (
    ROLES,
    DuplicateUser,
    TokenRow,
    TooMany,
    UserRow,
    get_store,
)
from api.names import check_path_names
from api.problems import Problem, problem_type
from api.resources import resources
from api.schemas import (
    Recipients,
    Telegram,
    Templates,
    TokenCreate,
    UserCreate,
    UserUpdate,
    Webhooks,
    body,
)
from api.validation import reject_args
from vigil.messages import (
    MAX_RECIPIENTS,
    MAX_WEBHOOKS,
    InvalidMessage,
    Webhook,
    check_chat_id,
    check_email,
    check_webhook,
)
from vigil.names import ADMIN_USER, NAME_RULE, is_name
from vigil.text import shown
from vigil.usertemplates import TEMPLATE_KEYS, TemplateProblem, check_templates

bp = Blueprint("users", __name__)
bp.before_request(check_path_names)
MAX_LABEL_CHARS = 100


@bp.before_request
def _no_args() -> None:
    reject_args(request.args.to_dict(flat=False))


def _invalid(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("invalid-user"), title="Invalid user")


def user_view(row: UserRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "role": row.role,
        "created_at": row.created_at,
        "tokens": row.tokens,
        "href": url_for("users.get_user", user=row.name),
    }


def token_view(row: TokenRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "label": row.label,
        "created_at": row.created_at,
        "href": url_for("users.revoke_token", user=row.user, token_id=row.id),
    }


def _no_user(user: str) -> Problem:
    return Problem(404, f"no user {user!r}")


def visible_user(user: str) -> UserRow:
    """``user``'s row if the caller may see it (an admin, or the user themself); else the
    same 404 as for a user that does not exist."""
    who = caller()
    row = get_store().user(user) if who.is_admin or who.user == user else None
    if row is None:
        raise _no_user(user)
    return row


def _role(body: dict[str, Any], default: str | None) -> str:
    role = body.get("role", default)
    if role not in ROLES:
        raise _invalid(f"role: must be one of {', '.join(ROLES)}, got {shown(role)}")
    return str(role)


def _label(body: dict[str, Any]) -> str:
    label = body.get("label", "")
    if not isinstance(label, str):
        raise _invalid(f"label: must be a string, got {type(label).__name__}")
    if len(label) > MAX_LABEL_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in label):
        raise _invalid(f"label: at most {MAX_LABEL_CHARS} characters, without control characters")
    return label


def _issue(user: str, label: str) -> dict[str, Any]:
    token = new_token()
    try:
        row = get_store().add_token(user, hash_token(token), label)
    except TooMany as exc:
        raise Problem(409, str(exc), type_=problem_type("too-many-tokens")) from None
    except KeyError:
        raise _no_user(user) from None
    return {**token_view(row), "token": token}


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"  # it holds a token
    return resp


@bp.get("/me")
def me() -> dict[str, Any]:
    """The caller: user name and role."""
    who = caller()
    row = get_store().user(who.user)
    return user_view(row) if row else {"name": who.user, "role": who.role}


@bp.get("/users")
def index() -> dict[str, Any]:
    """Every user with their role and token count (admin)."""
    require_admin("listing users")
    return {"users": [user_view(row) for row in get_store().users()]}


@bp.post("/users")
@body(UserCreate)
def create() -> tuple[Response, int]:
    """Create a user and their first token."""
    require_admin("creating users")
    body = json_object(_invalid, allowed=("name", "role", "label"))
    raw = body.get("name")
    if not is_name(raw):
        raise _invalid(
            "name: missing" if raw is None else f"name: {shown(raw)} is not a name: {NAME_RULE}"
        )
    name = str(raw)
    role = _role(body, "user")
    label = _label(body)
    store = get_store()
    try:
        store.add_user(name, role)
    except DuplicateUser as exc:
        raise Problem(409, str(exc), type_=problem_type("duplicate-user"), user=name) from None
    except TooMany as exc:
        raise Problem(409, str(exc), type_=problem_type("too-many-users")) from None
    token = _issue(name, label or "first")
    row = store.user(name)
    assert row is not None
    resp = jsonify({**user_view(row), "token": token})
    resp.headers["Location"] = url_for("users.get_user", user=name)
    return _no_store(resp), 201


@bp.get("/users/<user>")
def get_user(user: str) -> dict[str, Any]:
    """One user (the admin, or the user themself)."""
    return user_view(visible_user(user))


@bp.patch("/users/<user>")
@body(UserUpdate)
def patch_user(user: str) -> dict[str, Any]:
    """Change a user's role (admin)."""
    visible_user(user)  # a user probing another's name gets 404, not 403
    require_admin("changing roles")
    body = json_object(_invalid, allowed=("role",))
    role = _role(body, None)
    if user == ADMIN_USER and role != "admin":
        raise Problem(409, f"the user {ADMIN_USER!r} holds the admin token file: it stays admin")
    store = get_store()
    if (version := store.set_role(user, role)) is not None:
        resources().publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])
    row = store.user(user)
    assert row is not None
    return user_view(row)


@bp.delete("/users/<user>")
def delete_user(user: str) -> Response:
    """Remove a user, their tokens and what they own (admin)."""
    visible_user(user)
    require_admin("removing users")
    if user == ADMIN_USER:
        raise Problem(409, f"the user {ADMIN_USER!r} holds the admin token file: it stays")
    _, version = get_store().delete_user(user)
    if version is not None:  # their rules went with them
        resources().publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])
    return Response(status=204)


@bp.get("/users/<user>/tokens")
def tokens(user: str) -> dict[str, Any]:
    """The user's tokens: ids, labels and times (never a token itself)."""
    visible_user(user)
    return {"tokens": [token_view(row) for row in get_store().tokens(user)]}


@bp.post("/users/<user>/tokens")
@body(TokenCreate)
def issue_token(user: str) -> tuple[Response, int]:
    """Issue a new token; the answer is the only time it is shown."""
    visible_user(user)
    body = json_object(_invalid, allowed=("label",)) if request.get_data(cache=True) else {}
    token = _issue(user, _label(body))
    resp = jsonify(token)
    resp.headers["Location"] = token["href"]
    return _no_store(resp), 201


@bp.delete("/users/<user>/tokens/<token_id>")
def revoke_token(user: str, token_id: str) -> Response:
    """Revoke a token: requests with it get 401 from now on."""
    visible_user(user)
    if not get_store().revoke_token(user, token_id):
        raise Problem(404, f"user {user!r} has no token {token_id!r}")
    return Response(status=204)


def _recipients_view(user: str) -> dict[str, Any]:
    return {"user": user, "emails": get_store().recipients(user)}


@bp.get("/users/<user>/recipients")
def recipients(user: str) -> dict[str, Any]:
    """Where the user's alerts are emailed (the admin, or the user themself)."""
    visible_user(user)
    return _recipients_view(user)


@bp.put("/users/<user>/recipients")
@body(Recipients)
def set_recipients(user: str) -> Response:
    """Replace the addresses the user's alerts go to: ``{"emails": [...]}`` (at most 20;
    empty: the user's alerts are emailed to nobody). The notifier gets them with the rule
    set: the answer says whether the broker has it (``pushed``)."""
    visible_user(user)
    body = json_object(_invalid_recipients, allowed=("emails",))
    emails = body.get("emails")
    if not isinstance(emails, list) or len(emails) > MAX_RECIPIENTS:
        raise _invalid_recipients(f"emails: must be a list of at most {MAX_RECIPIENTS} addresses")
    try:
        checked = sorted({check_email(e, f"emails[{i}]") for i, e in enumerate(emails)})
    except InvalidMessage as exc:
        raise _invalid_recipients(exc.reason) from None
    version = get_store().set_recipients(user, checked)
    pushed = resources().publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])
    return jsonify({**_recipients_view(user), "version": version, "pushed": pushed})


def _invalid_recipients(detail: str) -> Problem:
    return Problem(
        400, detail, type_=problem_type("invalid-recipients"), title="Invalid recipients"
    )


def _webhooks_view(user: str, shown_secrets: dict[str, str] | None = None) -> dict[str, Any]:
    hooks = []
    for hook, created in get_store().webhooks(user):
        view: dict[str, Any] = {"name": hook.name, "url": hook.url, "created_at": created}
        if shown_secrets and hook.name in shown_secrets:
            view["secret"] = shown_secrets[hook.name]
        hooks.append(view)
    return {"user": user, "webhooks": hooks}


@bp.get("/users/<user>/webhooks")
def webhooks(user: str) -> dict[str, Any]:
    """Where the user's notifications are POSTed (the secrets are never shown again)."""
    visible_user(user)
    return _webhooks_view(user)


@bp.put("/users/<user>/webhooks")
@body(Webhooks)
def set_webhooks(user: str) -> Response:
    """Replace the user's webhooks: ``{"webhooks": [{"name", "url", "secret"?}]}`` (at most
    10). Each notification is POSTed as JSON to every one, signed with its secret
    (``X-Vigil-Signature: sha256=HMAC(secret, "{X-Vigil-Timestamp}.{body}")``). Without a
    secret, a webhook keeps the one it had, or gets a new one: a secret set or made here is
    answered this once. The notifier gets them in the channel snapshot (``pushed``)."""
    visible_user(user)
    body = json_object(_invalid_webhooks, allowed=("webhooks",))
    given = body.get("webhooks")
    if not isinstance(given, list) or len(given) > MAX_WEBHOOKS:
        raise _invalid_webhooks(f"webhooks: must be a list of at most {MAX_WEBHOOKS}")
    store = get_store()
    old = {hook.name: hook.secret for hook, _ in store.webhooks(user)}
    hooks: list[Webhook] = []
    shown_secrets: dict[str, str] = {}
    for i, item in enumerate(given):
        if not isinstance(item, dict):
            raise _invalid_webhooks(f"webhooks[{i}]: must be an object with name and url")
        unknown = sorted(set(item) - {"name", "url", "secret"})
        if unknown:
            raise _invalid_webhooks(f"webhooks[{i}]: unknown field {unknown[0]!r}")
        name = item.get("name")
        secret = item.get("secret")
        if secret is None:
            secret = old.get(name) if isinstance(name, str) else None
            if secret is None:
                secret = secrets.token_urlsafe(32)
                if isinstance(name, str):
                    shown_secrets[name] = secret
        elif isinstance(name, str):
            shown_secrets[name] = str(secret)
        try:
            hook = check_webhook({**item, "secret": secret}, f"webhooks[{i}]")
        except InvalidMessage as exc:
            raise _invalid_webhooks(exc.reason) from None
        if any(h.name == hook.name for h in hooks):
            raise _invalid_webhooks(f"webhooks[{i}]: name {hook.name!r} is given twice")
        hooks.append(hook)
    version = store.set_webhooks(user, hooks)
    res = resources()
    pushed = res.channel_publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])
    out = {**_webhooks_view(user, shown_secrets), "version": version, "pushed": pushed}
    response = jsonify(out)
    response.headers["Cache-Control"] = "no-store"
    return response


def _invalid_webhooks(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("invalid-webhooks"), title="Invalid webhooks")


@bp.get("/users/<user>/telegram")
def telegram(user: str) -> dict[str, Any]:
    """The Telegram chat the user's notifications go to (null: none)."""
    visible_user(user)
    return {"user": user, "chat_id": get_store().telegram_chat(user)}


@bp.put("/users/<user>/telegram")
@body(Telegram)
def set_telegram(user: str) -> Response:
    """``{"chat_id": "123456" | "@channel" | null}``: where the notifier's bot sends the
    user's notifications (null: nowhere). Pushed in the channel snapshot (``pushed``)."""
    visible_user(user)
    body = json_object(_invalid_telegram, allowed=("chat_id",))
    if "chat_id" not in body:
        raise _invalid_telegram("chat_id: required (null to stop Telegram notifications)")
    chat = body["chat_id"]
    try:
        checked = None if chat is None else check_chat_id(chat, "chat_id")
    except InvalidMessage as exc:
        raise _invalid_telegram(exc.reason) from None
    version = get_store().set_telegram_chat(user, checked)
    res = resources()
    pushed = res.channel_publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])
    return jsonify({"user": user, "chat_id": checked, "version": version, "pushed": pushed})


def _invalid_telegram(detail: str) -> Problem:
    return Problem(
        400, detail, type_=problem_type("invalid-telegram"), title="Invalid Telegram chat"
    )


@bp.get("/users/<user>/templates")
def templates(user: str) -> dict[str, Any]:
    """The user's own email templates (none: Vigil's)."""
    visible_user(user)
    return {"user": user, "templates": get_store().templates(user)}


@bp.put("/users/<user>/templates")
@body(Templates)
def set_templates(user: str) -> Response:
    """``{"subject"?, "text"?, "html"?}``: Jinja2 templates (sandboxed) for the user's
    emails; each part not given stays Vigil's, ``{}`` resets all. Checked and tried on a
    sample notification first: an error names the part and the line. The admin, or the user
    themself (so the admin can set anyone's)."""
    visible_user(user)
    body = json_object(_invalid_templates, allowed=TEMPLATE_KEYS)
    try:
        checked = check_templates(body)
    except TemplateProblem as exc:
        raise _invalid_templates(str(exc)) from None
    version = get_store().set_templates(user, checked)
    res = resources()
    pushed = res.channel_publisher.push(version, current_app.config["RULES_PUSH_TIMEOUT_S"])
    return jsonify({"user": user, "templates": checked, "version": version, "pushed": pushed})


def _invalid_templates(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("invalid-templates"), title="Invalid templates")
