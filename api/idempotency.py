"""``Idempotency-Key`` on every mutation (POST, PUT, PATCH, DELETE): a retry gets the first
answer, not a second effect (a 409 for a rule that now exists, a second user, a second
silence).

- The key is the caller's own (two users may use the same key), 1..255 visible ASCII
  characters; the first answer is kept ``KEEP_HOURS`` hours.
- A retry with the same key and the same request (method, path, query and body) gets the
  first answer again, with ``Idempotency-Replayed: true``.
- The same key with another request: 422. While the first request is still being handled:
  409, retry later.
- An answer of 5xx is not kept (nothing was done, or it is unknown): a retry runs again.
"""

from __future__ import annotations

import hashlib
import re

from flask import Flask, Response, g, request

from api.auth import caller
from api.db import get_store
from api.problems import Problem, problem_type

HEADER = "Idempotency-Key"
KEEP_HOURS = 24
MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for part in (request.method, request.path, request.query_string.decode("latin-1")):
        digest.update(part.encode() + b"\0")
    digest.update(request.get_data(cache=True))
    return digest.hexdigest()


def init_app(app: Flask) -> None:
    """Register after authentication: the key is scoped to the caller."""

    @app.before_request
    def _replay() -> Response | None:
        key = request.headers.get(HEADER)
        if key is None or request.method not in MUTATIONS or "caller" not in g:
            return None
        if not _KEY.fullmatch(key):
            raise Problem(
                400,
                f"{HEADER} must be 1 to 255 visible ASCII characters",
                type_=problem_type("invalid-idempotency-key"),
                title="Invalid Idempotency-Key",
            )
        user = caller().user
        fingerprint = _fingerprint()
        found = get_store().claim_idempotency(user, key, fingerprint, KEEP_HOURS * 3_600_000)
        if found is None:
            g.idempotency_key = key
            return None
        first_fingerprint, status, content_type, location, body = found
        if first_fingerprint != fingerprint:
            raise Problem(
                422,
                f"{HEADER} {key!r} was used for another request (method, path or body "
                "differ): use a new key for a new request",
                type_=problem_type("idempotency-key-reused"),
                title="Idempotency-Key reused",
            )
        if status is None:
            raise Problem(
                409,
                f"the request with {HEADER} {key!r} is still being handled: retry shortly",
                type_=problem_type("idempotency-key-in-flight"),
                title="Request in progress",
            )
        resp = Response(body or b"", status=status, content_type=content_type)
        if location:
            resp.headers["Location"] = location
        resp.headers["Idempotency-Replayed"] = "true"
        return resp

    @app.after_request
    def _keep(resp: Response) -> Response:
        key = g.pop("idempotency_key", None)
        if key is None:
            return resp
        store = get_store()
        user = caller().user
        if resp.status_code >= 500 or resp.is_streamed:
            store.release_idempotency(user, key)
        else:
            store.settle_idempotency(
                user,
                key,
                status=resp.status_code,
                content_type=resp.content_type,
                location=resp.headers.get("Location"),
                body=resp.get_data(),
            )
        return resp

    @app.teardown_request
    def _release(_exc: BaseException | None) -> None:
        key = g.pop("idempotency_key", None)
        if key is not None and "caller" in g:
            get_store().release_idempotency(caller().user, key)
