"""Bearer-token authentication on every route but ``GET /health``.

Tokens are never stored, only their SHA-256 hex digests: the admin token's digest comes
from ``api.admin_token_sha256_file`` (its holder is the user ``admin``); every other token
belongs to a user in the API database (``POST /users``, ``POST /users/<name>/tokens``, or
``python -m api --create-token NAME``). A missing or unknown token gets 401 with
``WWW-Authenticate: Bearer`` (RFC 6750); a known one sets ``g.caller``, a
:class:`~api.db.Caller` (user and role) that every view asks instead of the token.

The header is parsed totally: any value (odd bytes, other schemes, a token of any length)
ends as a token, "no token", or a 401 saying what is wrong; nothing else escapes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path

from flask import Flask, current_app, g, request

from api.console.assets import PUBLIC_PATHS as CONSOLE_PATHS
from api.db import Caller, get_store
from api.problems import Problem
from vigil.config_core import SecretFile, secret_problem
from vigil.names import ADMIN_USER

#: The web console's files are public too (its every data call sends a token).
PUBLIC_PATHS = frozenset({"/", "/health", "/openapi.json", "/docs", *CONSOLE_PATHS})
REALM = "vigil"
#: RFC 6750 b64token, matched whole (``fullmatch``: with ``$``, "tok\n" passed).
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: Longest token looked at; ours are 43 characters. Longer is malformed, not hashed.
MAX_TOKEN_CHARS = 512


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def read_token_digest(path: Path, key: str = "api.admin_token_sha256_file") -> str:
    """A token's SHA-256 hex digest from ``path`` (the setting ``key`` names it);
    ValueError says what is wrong."""
    problem = secret_problem(SecretFile(key, path, "sha256"))
    if problem is not None:  # the same check `--validate-config` makes
        raise ValueError(problem)
    return path.read_text(encoding="utf-8").strip().lower()


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when the header is
    absent; ValueError when it is not a well-formed bearer credential."""
    if header is None or not header.strip():
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise ValueError("the Authorization header must use the Bearer scheme")
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"the bearer token is longer than {MAX_TOKEN_CHARS} characters")
    if _TOKEN.fullmatch(token) is None:
        raise ValueError("the bearer token is malformed")
    return token


def _unauthorized(detail: str, error: str | None) -> Problem:
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    return Problem(401, detail, headers={"WWW-Authenticate": challenge})


def check_token(token: str, admin_digest: str | None) -> Caller | None:
    """Who holds ``token``: the admin (the token of the digest file) or a stored token's
    user; None if the token is unknown."""
    digest = hash_token(token)
    if admin_digest is not None and hmac.compare_digest(digest, admin_digest):
        return Caller(ADMIN_USER, "admin")
    return get_store().token_caller(digest)


def caller() -> Caller:
    """This request's caller (every route but the public ones has one)."""
    who: Caller = g.caller
    return who


def require_admin(what: str) -> None:
    """403 unless the caller is an admin; ``what``: what needs it ("managing devices")."""
    if not caller().is_admin:
        raise Problem(403, f"{what} needs an admin token")


def request_caller() -> Caller | None:
    """The caller named by this request's bearer token, or None when there is no token or
    it is malformed or unknown (for public routes that show more to a known caller)."""
    try:
        token = bearer_token(request.headers.get("Authorization"))
    except ValueError:
        return None
    if token is None:
        return None
    return check_token(token, current_app.config["ADMIN_TOKEN_SHA256"])


def init_app(app: Flask, admin_digest: str | None) -> None:
    """Require a valid bearer token before every request but those to public paths."""
    app.config["ADMIN_TOKEN_SHA256"] = admin_digest

    @app.before_request
    def _require_token() -> None:
        if request.path in PUBLIC_PATHS:
            return
        try:
            token = bearer_token(request.headers.get("Authorization"))
        except ValueError as exc:
            raise _unauthorized(str(exc), "invalid_request") from None
        if token is None:
            raise _unauthorized(
                "this resource needs a bearer token: send 'Authorization: Bearer <token>'", None
            )
        who = check_token(token, current_app.config["ADMIN_TOKEN_SHA256"])
        if who is None:
            raise _unauthorized("the bearer token is not valid", "invalid_token")
        g.caller = who
