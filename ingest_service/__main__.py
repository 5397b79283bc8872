"""``python -m ingest_service --config config/vigil.yaml``: MQTT readings into the ring."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from vigil.cli import check_secret_files, load_or_exit, load_service_config, service_parser
from vigil.config_core import ConfigError
from vigil.logs import setup_logging
from vigil.settings import VigilConfig, service_secret_files

log = logging.getLogger("ingest_service")


def load(path: str) -> VigilConfig:
    """The validated configuration, with the secret files ingest reads (its MQTT and
    InfluxDB passwords)."""
    return load_service_config(path, "ingest")


def main(argv: list[str] | None = None) -> int:
    ap = service_parser("vigil-ingest", __doc__ or "")
    ap.add_argument(
        "--member",
        type=int,
        default=None,
        help="run as process N of ingest.members (1-based): its own broker user, hints, port",
    )
    ap.add_argument(
        "--leave",
        action="store_true",
        help="retire this identity for good (a member no longer in ingest.members, or the "
        "single process after a switch to members): handle what its broker session holds, "
        "replay its hints, end the session, delete its hint folder; exit 0 when done",
    )
    ap.add_argument(
        "--leave-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="give up leaving after S seconds (exit 1, session and hints kept); default 300",
    )
    args = ap.parse_args(argv)
    config = load_or_exit(args, load)
    if isinstance(config, int):
        return config
    if args.leave and (
        (args.member is None and config.ingest.members == 1)
        or (args.member is not None and args.member <= config.ingest.members)
    ):
        who = "the single ingest process" if args.member is None else f"member {args.member}"
        print(
            f"{args.config}: ingest.members: {who} is still configured "
            f"(members: {config.ingest.members}); lower ingest.members and stop it first",
            file=sys.stderr,
        )
        return 2
    if args.member is not None or args.leave:
        try:
            ingest = (
                config.ingest.former(args.member)
                if args.leave
                else config.ingest.member(args.member)
            )
        except ValueError as exc:
            print(f"{args.config}: ingest.members: {exc}", file=sys.stderr)
            return 2
        config = config.model_copy(update={"ingest": ingest})
        try:  # the member's own password file
            check_secret_files(args.config, service_secret_files(config, "ingest"))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    setup_logging("ingest")
    from ingest_service.service import IngestService

    service = IngestService(config, ready_file=args.ready_file)
    if args.leave:
        return 0 if service.leave(args.leave_timeout) else 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.metrics.serve(config.ingest.metrics_port, config.ingest.metrics_host)
    service.start()
    log.info(
        "consuming %s as %s",
        config.ingest.subscription(config.broker.topics.data_filter),
        config.ingest.mqtt.client_id,
    )
    stop.wait()
    log.info("stopping")
    service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
