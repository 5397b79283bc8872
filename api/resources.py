"""The long-lived things the views share (storage cluster, MQTT client, device status
board, rule publisher, metrics), bound to the app by ``create_app`` and reached with
:func:`resources`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, current_app

from api.alert_board import AlertBoard
from api.broker_admin import BrokerAdmin
from api.gapcheck import GapChecker
from api.notification_board import NotificationBoard
from api.rules_sync import RulePublisher
from api.slo_runner import SloRunner
from api.status import StatusBoard
from api.ticker_sync import TickerSync
from storage_nodes import StorageCluster
from storage_nodes.downsample import Downsampler
from storage_nodes.ops import AutoRepair
from vigil.metrics import ServiceMetrics
from vigil.mqtt import MqttClient
from vigil.settings import VigilConfig

log = logging.getLogger(__name__)

EXTENSION = "vigil"


@dataclass
class ApiResources:
    config: VigilConfig
    storage: StorageCluster
    mqtt: MqttClient
    status: StatusBoard
    alerts: AlertBoard
    notifications: NotificationBoard
    publisher: RulePublisher
    channel_publisher: RulePublisher
    broker_admin: BrokerAdmin
    metrics: ServiceMetrics
    owns_storage: bool
    owns_mqtt: bool
    tickers: TickerSync
    auto_repair: AutoRepair | None = None
    downsampler: Downsampler | None = None
    gap_check: GapChecker | None = None
    slo: SloRunner | None = None

    def close(self) -> None:
        """Stop what the app started; a client or cluster passed in stays the caller's."""
        self.publisher.stop()
        self.channel_publisher.stop()
        self.tickers.stop()
        if self.gap_check is not None:
            self.gap_check.stop()
        if self.slo is not None:
            self.slo.stop()
        if self.owns_mqtt:
            self.mqtt.stop()
        if self.owns_storage:
            self.storage.close()


def init_app(app: Flask, res: ApiResources) -> None:
    app.extensions[EXTENSION] = res


def resources() -> ApiResources:
    res: ApiResources = current_app.extensions[EXTENSION]
    return res


def close_app(app: Flask) -> None:
    """Release the app's resources (MQTT connection, publisher thread, storage pool)."""
    res: ApiResources | None = app.extensions.pop(EXTENSION, None)
    if res is not None:
        res.close()
