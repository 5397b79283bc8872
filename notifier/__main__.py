"""``python -m notifier --config config/vigil.yaml``: email every alert transition."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
from pathlib import Path

from notifier.service import Notifier
from vigil.cli import load_or_exit, load_service_config, service_parser
from vigil.logs import setup_logging
from vigil.metrics import ServiceMetrics
from vigil.settings import VigilConfig

log = logging.getLogger("notifier")


def load(path: str) -> VigilConfig:
    """The validated configuration, including readable secret files (MQTT and SMTP)."""
    return load_service_config(path, "notifier")


async def serve(config: VigilConfig, ready_file: Path | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = ServiceMetrics("notifier", "send")
    notifier = Notifier(config.broker, config.notifier, metrics, ready_file=ready_file)
    metrics.serve(config.notifier.metrics_port, config.notifier.metrics_host)
    await notifier.run(stop)


def main(argv: list[str] | None = None) -> int:
    args = service_parser("vigil-notifier", __doc__ or "").parse_args(argv)
    config = load_or_exit(args, load)
    if isinstance(config, int):
        return config
    setup_logging("notifier")
    try:
        asyncio.run(serve(config, args.ready_file))
    except (OSError, sqlite3.Error) as exc:
        log.error("notifier stopped: %s", exc)
        return 1
    except Exception:
        log.exception("notifier failed")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
