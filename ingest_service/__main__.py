"""``python -m ingest_service --config config/vigil.yaml``: MQTT readings into the ring."""

from __future__ import annotations

import logging
import signal
import threading

from vigil.cli import load_or_exit, load_service_config, service_parser
from vigil.logs import setup_logging
from vigil.settings import VigilConfig

log = logging.getLogger("ingest_service")


def load(path: str) -> VigilConfig:
    """The validated configuration, with the secret files ingest reads (its MQTT and
    InfluxDB passwords)."""
    return load_service_config(path, "ingest")


def main(argv: list[str] | None = None) -> int:
    args = service_parser("vigil-ingest", __doc__ or "").parse_args(argv)
    config = load_or_exit(args, load)
    if isinstance(config, int):
        return config
    setup_logging("ingest")
    from ingest_service.service import IngestService

    service = IngestService(config, ready_file=args.ready_file)
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
