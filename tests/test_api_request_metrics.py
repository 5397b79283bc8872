"""Request metrics: requests in and out, errors by status class, latency."""

from __future__ import annotations

from prometheus_client import generate_latest

from api import close_app, create_app
from api.request_metrics import error_kind


def test_error_kind_is_the_status_class():
    assert [error_kind(s) for s in (200, 201, 204, 304, 400, 404, 503)] == [
        None,
        None,
        None,
        None,
        "http_4xx",
        "http_4xx",
        "http_5xx",
    ]


def test_every_request_is_counted_and_timed(cloud_config):
    app = create_app(cloud_config.config, test_config={"TESTING": True})
    try:
        client = app.test_client()
        auth = {"Authorization": f"Bearer {cloud_config.admin_token}"}
        assert client.get("/ring", headers=auth).status_code == 200
        assert client.get("/ring").status_code == 401
        assert client.get("/nope", headers=auth).status_code == 404
        text = generate_latest(app.extensions["vigil"].metrics.registry).decode()
    finally:
        close_app(app)
    assert 'vigil_messages_in_total{service="api"} 3.0' in text
    assert 'vigil_messages_out_total{service="api"} 3.0' in text
    assert 'vigil_errors_total{kind="http_4xx",service="api"} 2.0' in text
    assert 'vigil_step_seconds_count{service="api"} 3.0' in text
