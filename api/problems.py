"""Every error the API answers is an RFC 9457 problem (``application/problem+json``):
``type``, ``title``, ``status``, ``detail`` and ``instance`` (the request path), plus
extension members where they help (``parameter`` for a bad parameter).

Views raise :class:`Problem`; ``init_app`` turns it, Flask's own HTTP errors (404, 405,
413...), storage failures (503 when unreachable, 502 when it rejects a query) and any
unexpected exception (500, logged with its traceback) into problem responses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from api.validation import InvalidParameter
from storage_nodes import FatalStorageError, RetriableStorageError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: Problem types of this API; plain HTTP errors use "about:blank" (RFC 9457 section 4.2.1).
TYPE_PREFIX = "urn:vigil:problem:"
STORAGE_RETRY_AFTER_S = 5


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
    body = current_app.json.dumps(problem_body(problem, request.path))
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
    if isinstance(exc, NotFound) and request.routing_exception is exc:
        detail = f"no resource at {request.path}; see the API's routes in docs/architecture.md"
    elif isinstance(exc, MethodNotAllowed):
        allowed = sorted(exc.valid_methods or [])
        detail = f"{request.method} is not allowed on {request.path}"
        if allowed:
            detail += f"; allowed: {', '.join(allowed)}"
            headers["Allow"] = ", ".join(allowed)
    return Problem(status, detail, title=exc.name, headers=headers)


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

    @app.errorhandler(RetriableStorageError)
    def _storage_down(exc: RetriableStorageError) -> Response:
        log.warning("storage unavailable for %s %s: %s", request.method, request.path, exc)
        return problem_response(
            Problem(
                503,
                f"storage is unreachable: {exc}; try again later",
                type_=problem_type("storage-unavailable"),
                title="Storage unavailable",
                headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)},
            )
        )

    @app.errorhandler(FatalStorageError)
    def _storage_refused(exc: FatalStorageError) -> Response:
        log.error("storage refused the query for %s %s: %s", request.method, request.path, exc)
        return problem_response(
            Problem(
                502,
                f"storage refused the query: {exc}",
                type_=problem_type("storage-error"),
                title="Storage error",
            )
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return problem_response(
            Problem(
                500,
                f"unexpected {type(exc).__name__} while serving {request.method} "
                f"{request.path}; the API log has the details",
            )
        )
