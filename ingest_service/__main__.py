"""``python -m ingest_service --config config/vigil.yaml``: MQTT readings into the ring."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from vigil.logs import setup_logging
from vigil.settings import ConfigError, load_config

log = logging.getLogger("ingest_service")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vigil-ingest", description=__doc__)
    ap.add_argument("--config", default="config/vigil.yaml")
    ap.add_argument(
        "--validate-config", action="store_true", help="check the configuration and exit"
    )
    args = ap.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"vigil-ingest: {exc}", file=sys.stderr)
        return 2
    if args.validate_config:
        print("ok")
        return 0
    setup_logging("ingest")
    from ingest_service.service import IngestService

    service = IngestService(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.metrics.serve(config.ingest.metrics_port, config.ingest.metrics_host)
    service.start()
    log.info("consuming %s as %s", config.broker.topics.data_filter, config.ingest.mqtt.client_id)
    stop.wait()
    log.info("stopping")
    service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
