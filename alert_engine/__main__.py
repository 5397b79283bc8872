"""``python -m alert_engine --config config/vigil.yaml``: evaluate threshold rules on the
reading stream and publish alert transitions."""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading

from alert_engine.service import AlertEngine
from vigil.cli import load_or_exit, load_service_config, service_parser
from vigil.logs import setup_logging
from vigil.metrics import ServiceMetrics
from vigil.settings import VigilConfig

log = logging.getLogger("alert_engine")


def load(path: str) -> VigilConfig:
    """The validated configuration, including a readable MQTT password file."""
    return load_service_config(path, "alert_engine")


def main(argv: list[str] | None = None) -> int:
    args = service_parser("vigil-alert-engine", __doc__ or "").parse_args(argv)
    config = load_or_exit(args, load)
    if isinstance(config, int):
        return config

    setup_logging("alert_engine")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    metrics = ServiceMetrics("alert_engine", "evaluate")
    try:
        engine = AlertEngine(
            config.broker,
            config.alert_engine,
            metrics,
            args.ready_file,
            quote_agents=config.quote_agents,
        )
        metrics.serve(config.alert_engine.metrics_port, config.alert_engine.metrics_host)
    except (OSError, sqlite3.Error) as exc:
        log.error("alert engine cannot start: %s", exc)
        return 1
    engine.start()
    log.info(
        "alert engine started: readings from %s, rule sets from %s, alerts to %s",
        engine.topics.data_filter,
        engine.topics.rules,
        engine.topics.alerts_filter,
    )
    stop.wait()  # a failed batch ends the process itself (crash-only: vigil.consumer)
    engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
