"""Vigil's REST API: devices and their status, queries of stored readings, the storage
ring, and alert rules that reach the alert engine over MQTT without a restart.

Built by :func:`create_app` (the Flask tutorial's application factory); served by waitress
from ``python -m api``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from api import (
    alerts,
    auth,
    db,
    devices,
    health,
    idempotency,
    ingest,
    notifications,
    openapi,
    problems,
    request_metrics,
    ring,
    rules,
    silences,
    slos,
    symbols,
    users,
)
from api import storage as storage_routes
from api.alert_board import AlertBoard
from api.broker_admin import BrokerAdmin
from api.console import live, pages
from api.gapcheck import GapChecker
from api.influx_gateway import create_influx_app
from api.notification_board import NotificationBoard
from api.resources import ApiResources, close_app, resources
from api.resources import init_app as bind_resources
from api.rules_sync import RulePublisher, channel_set_payload
from api.slo_runner import SloRunner, targets_of
from api.status import StatusBoard
from api.storage import storage_ops
from api.ticker_sync import TickerSync
from storage_nodes import StorageCluster
from storage_nodes.metrics import StorageCollector
from vigil.config_core import ConfigError
from vigil.device_config import DeviceConfig, decode_device_settings
from vigil.metrics import ServiceMetrics
from vigil.mqtt import MqttClient, PublishError
from vigil.settings import VigilConfig

__all__ = ["close_app", "create_app", "resources"]

#: Where the app keeps the cluster endpoint's own app (api/influx_gateway.py).
INFLUX_EXTENSION = "vigil.influx"

#: Largest request body accepted (rules are small).
MAX_BODY_BYTES = 64 * 1024


def _options_without_body(response: Response) -> Response:
    """Flask answers OPTIONS with an empty 200 labelled text/html: make it a 204 with only
    the ``Allow`` header."""
    if request.method == "OPTIONS" and response.status_code == 200 and not response.data:
        response.status_code = 204
        del response.headers["Content-Type"]
    return response


def create_app(
    config: VigilConfig,
    *,
    storage: StorageCluster | None = None,
    mqtt: MqttClient | None = None,
    test_config: Mapping[str, Any] | None = None,
) -> Flask:
    """Build the API for ``config``.

    Without ``storage`` or ``mqtt`` the app makes its own from the configuration, connects
    to the broker in the background and releases both in :func:`close_app`. A client passed
    in is the caller's to start and stop; the app subscribes to the status topics and
    publishes rule snapshots on it. ``test_config`` overrides Flask settings
    (``DATABASE``, ``RULES_PUSH_TIMEOUT_S``, ``TESTING``...).

    Raises ConfigError if the admin token digest file is unusable.
    """
    settings = config.api
    app = Flask(__name__)
    app.config.from_mapping(
        DATABASE=str(settings.database),
        RULES_PUSH_TIMEOUT_S=5.0,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # "/devices//dev-1" is a 404 problem, not a 308 to another URL with an HTML body.
    app.url_map.merge_slashes = False

    admin_digest = None
    if settings.admin_token_sha256_file is not None:
        try:
            admin_digest = auth.read_token_digest(settings.admin_token_sha256_file)
        except ValueError as exc:
            raise ConfigError(str(settings.admin_token_sha256_file), "", str(exc)) from None
    reader_file = settings.reader_token_sha256_file
    if reader_file is not None:
        try:
            key = "api.reader_token_sha256_file"
            app.config["READER_TOKEN_SHA256"] = auth.read_token_digest(reader_file, key)
        except ValueError as exc:
            raise ConfigError(str(reader_file), "", str(exc)) from None

    db.init_app(app)
    metrics = ServiceMetrics("api", "request")
    owns_mqtt = mqtt is None
    client = mqtt or MqttClient(config.broker, settings.mqtt)
    topics = config.broker.topics
    board = StatusBoard(topics)
    client.subscribe(topics.status_filter, board.on_message)
    alert_board = AlertBoard(topics)
    client.subscribe(topics.firing_filter, alert_board.on_message)
    notification_board = NotificationBoard(topics)
    client.subscribe(topics.notifications_filter, notification_board.on_message)
    database = Path(app.config["DATABASE"])
    configured_owners = {d.id: d.owner for d in config.devices}
    store = db.Store.open(database)
    try:  # a changed owner in vigil.yaml is a new rule set: the engine scopes rules again
        owners_digest = json.dumps(sorted(configured_owners.items())).encode()
        store.note_config_owners(hashlib.sha256(owners_digest).hexdigest())
    finally:
        store.close()

    def read_snapshot() -> db.RuleSnapshot:
        store = db.Store.open(database)
        try:
            return store.snapshot(configured_owners)
        finally:
            store.close()

    publisher = RulePublisher(client, topics.rules, read_snapshot, metrics)
    channel_publisher = RulePublisher(
        client,
        topics.channels,
        read_snapshot,
        metrics,
        encode=channel_set_payload,
        what="channels",
    )
    broker_admin = BrokerAdmin(client, settings.broker_owners_file)
    if broker_admin.enabled:
        broker_admin.write_owners(_added_devices(database))

    def republish_configs(_session_present: bool) -> None:
        """Every stored live configuration, again, on each connect (the broker may have
        lost a retained message; agents ignore a version they applied)."""
        for device, payload in _live_configs(database):
            client.publish(topics.device_config(device), payload, retain=True)

    client.on_connected.append(republish_configs)

    def publish_config(device: str, payload: bytes) -> bool:
        try:
            client.publish_wait(
                topics.device_config(device),
                payload,
                retain=True,
                timeout=app.config["RULES_PUSH_TIMEOUT_S"],
            )
        except PublishError:
            return False
        return True

    def delete_quotes(device: str, metric: str, before_ms: int) -> object:
        return storage_ops(res).delete_series(device, metric, before_ms)

    tickers = TickerSync(
        database,
        sorted(config.quote_agents),
        board.get,
        publish_config,
        retention_s=config.storage.retention_s or 0.0,
        delete_series=delete_quotes,
        interval_s=settings.ticker_sync_interval_s,
    )
    board.listeners.append(tickers.on_status)
    res = ApiResources(
        config=config,
        storage=storage or StorageCluster(config.storage),
        mqtt=client,
        status=board,
        alerts=alert_board,
        notifications=notification_board,
        publisher=publisher,
        channel_publisher=channel_publisher,
        broker_admin=broker_admin,
        metrics=metrics,
        owns_storage=storage is None,
        owns_mqtt=owns_mqtt,
        tickers=tickers,
    )
    metrics.registry.register(StorageCollector(res.storage, "api"))
    res.gap_check = GapChecker(
        res.storage,
        status=board,
        mqtt=client,
        topics=topics,
        metrics=metrics,
        interval_s=settings.gap_check_interval_s,
    )
    res.gap_check.start()
    res.slo = SloRunner(database, targets_of(config), settings.slo_interval_s)
    res.slo.start()
    tickers.start()
    # Hooks run in registration order: time the request before authenticating it.
    request_metrics.init_app(app, metrics)
    problems.init_app(app)
    auth.init_app(app, admin_digest)
    idempotency.init_app(app)
    for module in (
        health,
        users,
        devices,
        ring,
        rules,
        alerts,
        ingest,
        notifications,
        silences,
        slos,
        storage_routes,
        symbols,
        openapi,
        live,
        pages,
    ):
        app.register_blueprint(module.bp)
    app.after_request(_options_without_body)
    bind_resources(app, res)
    app.extensions[INFLUX_EXTENSION] = create_influx_app(res, app.config)
    publisher.start()
    channel_publisher.start()
    if owns_mqtt:
        client.start()
    return app


def _added_devices(database: Path) -> list[str]:
    store = db.Store.open(database)
    try:
        return store.added_devices()
    finally:
        store.close()


def _live_configs(database: Path) -> list[tuple[str, bytes]]:
    """(device, payload) of every stored live configuration."""
    store = db.Store.open(database)
    try:
        rows = store.devices()
    finally:
        store.close()
    out = []
    for row in rows:
        if row.config is None:
            continue
        try:
            settings = decode_device_settings(json.loads(row.config))
        except ValueError:  # KeyedError is one
            continue  # stored by this API, validated then: only a hand-edited row
        live = DeviceConfig(device=row.id, version=row.config_version, **settings.given())
        out.append((row.id, live.encode()))
    return out
