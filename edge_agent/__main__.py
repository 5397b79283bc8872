"""``python -m edge_agent --config config/agents/demo-1.yaml``: run one edge agent.

``--validate-config`` checks the file and exits;
``--ticks N`` takes N rounds of readings, waits until they are acknowledged, and exits.
Keys can be overridden with ``VIGIL_AGENT__<KEY>=value`` (e.g. ``VIGIL_AGENT__INTERVAL_S=5``).
SIGTERM or SIGINT stops it cleanly: offline status published, outbox kept for the next run.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from edge_agent.agent import Agent
from edge_agent.outbox import OutboxError
from edge_agent.sources import SourceError
from vigil.agent_settings import AgentConfig, agent_secret_files, load_agent_config
from vigil.cli import check_secret_files, load_or_exit, service_parser
from vigil.config_core import ConfigError
from vigil.logs import setup_logging
from vigil.topics import TopicError, Topics

DEFAULT_CONFIG = "config/agents/demo-1.yaml"


def check_config(path: str, config: AgentConfig) -> None:
    """What the settings model cannot see: the topic root (the model checks that the
    username and client id are the device id, and the quote symbols)."""
    try:
        Topics(config.broker.topic_root)
    except TopicError as exc:
        raise ConfigError(path, "broker.topic_root", str(exc)) from exc


def load(path: str) -> AgentConfig:
    """The validated configuration, with a readable password file."""
    config = load_agent_config(path)
    check_config(path, config)
    check_secret_files(path, agent_secret_files(config))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = service_parser("vigil-agent", "Run one edge agent.", DEFAULT_CONFIG)
    parser.add_argument(
        "--ticks",
        type=int,
        default=None,
        metavar="N",
        help="take N rounds of readings, wait until delivered, exit",
    )
    args = parser.parse_args(argv)
    config = load_or_exit(args, load)
    if isinstance(config, int):
        return config
    setup_logging("edge_agent")
    try:
        agent = Agent(config)
    except SourceError as exc:
        print(f"{args.config}: {exc.key}: {exc.reason}", file=sys.stderr)
        return 2
    except (OutboxError, OSError) as exc:
        print(f"{args.config}: outbox_path: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.metrics.serve(config.metrics_port, config.metrics_host)
    agent.run(ticks=args.ticks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
