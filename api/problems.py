"""Every error the API answers is an RFC 9457 problem (``application/problem+json``):
``type``, ``title``, ``status``, ``detail`` and ``instance`` (the request path,
percent-encoded: a URI reference even when the path held control characters), plus extension
members where they help (``parameter`` for a bad parameter).

Views raise :class:`Problem`; ``init_app`` turns it, Flask's own HTTP errors (404, 405,
413...), storage failures (503 when unreachable, 502 when it rejects a query), the API database
being busy or unreachable (503) and any unexpected exception (500, logged with its
traceback) into problem responses.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from api.db import is_unavailable
from api.validation import InvalidParameter
from storage_nodes import FatalStorageError, RetriableStorageError, SeriesUnavailable
from vigil.text import cut

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: Problem types of this API; plain HTTP errors use "about:blank" (RFC 9457 section 4.2.1).
TYPE_PREFIX = "urn:vigil:problem:"
STORAGE_RETRY_AFTER_S = 5
#: Characters of the path or method repeated in a ``detail``.
SHOWN_CHARS = 200
#: Characters a path keeps as they are in ``instance`` (RFC 3986 pchar and "/").
_PATH_SAFE = "/!$&'()*+,;=:@-._~"


def problem_type(slug: str) -> str:
    return TYPE_PREFIX + slug


class Problem(Exception):
    """An error answer: raise it from a view."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str = "about:blank",
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.title = title or HTTPStatus(status).phrase
        self.headers = dict(headers or {})
        self.extensions = extensions


def request_instance() -> str:
    """This request's path as a URI reference: percent-encoded UTF-8."""
    return quote(request.path, safe=_PATH_SAFE, errors="replace")


def problem_body(problem: Problem, instance: str) -> dict[str, Any]:
    return {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": instance,
        **problem.extensions,
    }


def problem_response(problem: Problem) -> Response:
    body = current_app.json.dumps(problem_body(problem, request_instance()))
    resp = current_app.response_class(body + "\n", status=problem.status, mimetype=PROBLEM_JSON)
    resp.headers.update(problem.headers)
    return resp


def invalid_parameter(exc: InvalidParameter) -> Problem:
    return Problem(
        400,
        f"{exc.parameter}: {exc.reason}",
        type_=problem_type("invalid-parameter"),
        title="Invalid parameter",
        parameter=exc.parameter,
    )


def _http_problem(exc: HTTPException) -> Problem:
    status = exc.code or 500
    detail = exc.description or HTTPStatus(status).description
    headers: dict[str, str] = {}
    path = cut(request_instance(), SHOWN_CHARS)
    if isinstance(exc, NotFound) and request.routing_exception is exc:
        detail = f"no resource at {path}; see the API's routes in docs/architecture.md"
    elif isinstance(exc, RequestEntityTooLarge):
        limit = request.max_content_length
        detail = "the request body is too large"
        if limit is not None:
            detail += f": this API accepts at most {limit} bytes"
    elif isinstance(exc, MethodNotAllowed):
        allowed = sorted(exc.valid_methods or [])
        detail = f"{cut(request.method, SHOWN_CHARS)} is not allowed on {path}"
        if allowed:
            detail += f"; allowed: {', '.join(allowed)}"
            headers["Allow"] = ", ".join(allowed)
    return Problem(status, detail, title=exc.name, headers=headers)


def _unavailable(what: str, detail: str, **extensions: Any) -> Response:
    """503 for a dependency that is down (``storage`` or ``database``), with Retry-After."""
    return problem_response(
        Problem(
            503,
            detail,
            type_=problem_type(f"{what}-unavailable"),
            title=f"{what.capitalize()} unavailable",
            headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
            **extensions,
        )
    )


def init_app(app: Flask) -> None:
    """Answer every error with a problem document."""

    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc)

    @app.errorhandler(InvalidParameter)
    def _invalid(exc: InvalidParameter) -> Response:
        return problem_response(invalid_parameter(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return problem_response(_http_problem(exc))

    @app.errorhandler(SeriesUnavailable)
    def _series_down(exc: SeriesUnavailable) -> Response:
        log.warning("no replica of %s answered for %s: %s", exc.series, request_instance(), exc)
        return _unavailable(
            "storage",
            f"{exc.reason}; try again later",
            series=exc.series,
            servers=exc.servers,
        )

    @app.errorhandler(RetriableStorageError)
    def _storage_down(exc: RetriableStorageError) -> Response:
        log.warning("storage unavailable for %s %s: %s", request.method, request_instance(), exc)
        return _unavailable("storage", f"storage is unreachable: {exc}; try again later")

    @app.errorhandler(FatalStorageError)
    def _storage_refused(exc: FatalStorageError) -> Response:
        log.error(
            "storage refused the query for %s %s: %s", request.method, request_instance(), exc
        )
        return problem_response(
            Problem(
                502,
                f"storage refused the query: {exc}",
                type_=problem_type("storage-error"),
                title="Storage error",
            )
        )

    @app.errorhandler(sqlite3.Error)
    def _database(exc: sqlite3.Error) -> Response:
        if not is_unavailable(exc):
            return _unexpected(exc)
        log.warning(
            "API database unavailable for %s %s: %s", request.method, request_instance(), exc
        )
        return _unavailable("database", f"the API database is unavailable ({exc}); try again later")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request_instance())
        return problem_response(
            Problem(
                500,
                f"unexpected {type(exc).__name__} while serving {cut(request.method, SHOWN_CHARS)} "
                f"{cut(request_instance(), SHOWN_CHARS)}; the API log has the details",
            )
        )
