"""Request metrics: every request counts in ``vigil_messages_in_total``, every answer in
``vigil_messages_out_total``, 4xx/5xx answers in ``vigil_errors_total{kind="http_4xx"|
"http_5xx"}`` and the time to answer in ``vigil_step_seconds`` (service "api")."""

from __future__ import annotations

import time

from flask import Flask, Response, g

from vigil.metrics import ServiceMetrics


def error_kind(status: int) -> str | None:
    """The error counter's kind for an HTTP status, or None for a success."""
    return f"http_{status // 100}xx" if status >= 400 else None


def init_app(app: Flask, metrics: ServiceMetrics) -> None:
    """Count and time every request; registered before any other request hook."""

    @app.before_request
    def _started() -> None:
        g.request_started = time.perf_counter()
        metrics.messages_in.inc()

    @app.after_request
    def _answered(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            metrics.step_seconds.observe(time.perf_counter() - started)
        metrics.messages_out.inc()
        kind = error_kind(response.status_code)
        if kind:
            metrics.error(kind)
        return response
