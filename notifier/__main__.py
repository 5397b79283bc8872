"""``python -m notifier --config config/vigil.yaml``: email every alert transition."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
from pathlib import Path

from notifier.service import Notifier
from vigil.logs import setup_logging
from vigil.metrics import ServiceMetrics
from vigil.settings import ConfigError, VigilConfig, load_config, read_secret

log = logging.getLogger("notifier")


def load(path: str) -> VigilConfig:
    """The validated configuration, including readable secret files."""
    config = load_config(path)
    secrets: dict[str, Path | None] = {
        "notifier.mqtt.password_file": config.notifier.mqtt.password_file,
        "notifier.smtp.password_file": config.notifier.smtp.password_file,
    }
    for key, secret in secrets.items():
        try:
            read_secret(secret)
        except OSError as exc:
            raise ConfigError(path, key, f"cannot read {secret}: {exc.strerror}") from exc
    return config


async def serve(config: VigilConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = ServiceMetrics("notifier", "send")
    notifier = Notifier(config.broker, config.notifier, metrics)
    metrics.serve(config.notifier.metrics_port, config.notifier.metrics_host)
    await notifier.run(stop)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vigil-notifier", description=__doc__.splitlines()[0])
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
    setup_logging("notifier")
    try:
        asyncio.run(serve(config))
    except (OSError, sqlite3.Error) as exc:
        log.error("notifier stopped: %s", exc)
        return 1
    except Exception:
        log.exception("notifier failed")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
