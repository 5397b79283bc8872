"""``python -m alert_engine --config config/vigil.yaml``: evaluate threshold rules on the
reading stream and publish alert transitions."""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path

from alert_engine.service import AlertEngine
from vigil.logs import setup_logging
from vigil.metrics import ServiceMetrics
from vigil.settings import ConfigError, VigilConfig, load_config, read_secret

log = logging.getLogger("alert_engine")


def load(path: str) -> VigilConfig:
    """The validated configuration, including a readable MQTT password file."""
    config = load_config(path)
    secret: Path | None = config.alert_engine.mqtt.password_file
    try:
        read_secret(secret)
    except OSError as exc:
        raise ConfigError(
            path, "alert_engine.mqtt.password_file", f"cannot read {secret}: {exc.strerror}"
        ) from exc
    return config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vigil-alert-engine", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/vigil.yaml", help="cloud configuration file")
    ap.add_argument(
        "--validate-config",
        action="store_true",
        help="check the configuration, print ok or the error, and exit",
    )
    args = ap.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.validate_config:
        print("ok")
        return 0

    setup_logging("alert_engine")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    metrics = ServiceMetrics("alert_engine", "evaluate")
    try:
        engine = AlertEngine(config.broker, config.alert_engine, metrics)
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
    while not stop.wait(0.5):
        if engine.failed.is_set():
            break
    engine.stop()
    return 1 if engine.failed.is_set() else 0


if __name__ == "__main__":
    raise SystemExit(main())
