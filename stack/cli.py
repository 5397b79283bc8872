"""``vigil``: one command for the whole system.

vigil run                 start the local stack (make run)
vigil ingest|alert-engine|notifier|api [--config ...]
vigil agent --config config/agents/demo-1.yaml
vigil storage status|fail|recover|add|remove|strategy|repair|replicas
                          the storage cluster's node operations (vigil storage --help)
vigil devices list|add|disable|enable|remove|config
                          devices managed live over the API (vigil devices --help)
vigil login|whoami|users|rules|alerts|notifications|silences|recipients|webhooks|
      telegram|query      users' and admins' commands over the API (vigil rules --help;
                          the whole list: python -m stack.api_cli --help)
vigil validate-config     check config/vigil.yaml and config/agents/*.yaml as every
                          service would at start, secret files included
    vigil admin-token --secrets DIR [--reader]
                              create the API admin token once (DIR/admin.token), and the
                              dashboards' read-only token (DIR/reader.token)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from vigil.cli import check_secret_files
from vigil.config_core import SERVICES as SERVICE_SECTIONS
from vigil.config_core import ConfigError
from vigil.settings import load_config, service_secret_files

SERVICES = {
    "ingest": "ingest_service",
    "alert-engine": "alert_engine",
    "notifier": "notifier",
    "api": "api",
    "agent": "edge_agent",
}


def validate_config(config_path: Path, agents: Path) -> None:
    """Check the whole system's configuration as each part checks its own at start: the
    cloud file once per service, with the secret files that service reads, then every agent
    file in ``agents`` (``edge_agent``'s own check, its password file included), then what
    only the files together show: one agent per device, no agent under a service's broker
    user, one topic root. Raises ConfigError for the first problem."""
    from edge_agent.__main__ import load as load_agent

    path = str(config_path)
    config = load_config(path)
    for service in SERVICE_SECTIONS:
        check_secret_files(path, service_secret_files(config, service))
    service_users = {config.service_mqtt(s).username: s for s in SERVICE_SECTIONS}
    devices: dict[str, str] = {}
    for agent_path in sorted(agents.glob("*.yaml")):
        apath = str(agent_path)
        agent = load_agent(apath)
        if agent.device_id in devices:
            raise ConfigError(
                apath,
                "device_id",
                f"{agent.device_id!r} is also the device of {devices[agent.device_id]}: "
                "one agent per device",
            )
        devices[agent.device_id] = apath
        if agent.device_id in service_users:
            raise ConfigError(
                apath,
                "device_id",
                f"{agent.device_id!r} is the broker user of "
                f"{service_users[agent.device_id]} in {path}",
            )
        if agent.broker.topic_root != config.broker.topic_root:
            raise ConfigError(
                apath,
                "broker.topic_root",
                f"{agent.broker.topic_root!r} is not {config.broker.topic_root!r}, the topic "
                f"root of {path}: the services would never see this agent's readings",
            )


def layout_note(config_path: Path) -> str | None:
    """What ``validate-config`` says when a cluster layout file overrides the storage
    servers of the configuration (which then only seeded it)."""
    from storage_nodes.layout import load

    config = load_config(str(config_path))
    path = config.storage.layout_path
    if path is None or not path.exists():
        return None
    try:
        layout = load(path, config.storage)
    except ValueError as exc:
        raise ConfigError(str(path), "", str(exc)) from None
    return (
        f"note: the cluster layout {path} (version {layout.version}: "
        f"{', '.join(layout.names())}, strategy {layout.strategy}, replication factor "
        f"{layout.replication_factor}) wins over storage.nodes and storage.replication_factor "
        f"in {config_path}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "storage":
        from stack.storage_cli import main as storage_main

        return storage_main(argv[1:])
    if argv and argv[0] == "devices":
        from stack.devices_cli import main as devices_main

        return devices_main(argv[1:])
    from stack import api_cli

    if argv and api_cli.wants(argv):
        return api_cli.main(argv)
    if argv and argv[0] in SERVICES:
        module = importlib.import_module(f"{SERVICES[argv[0]]}.__main__")
        return int(module.main(argv[1:]))
    ap = argparse.ArgumentParser(
        prog="vigil", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="start the local stack")
    val_p = sub.add_parser("validate-config", help="check the configuration files")
    for p in (run_p, val_p):
        p.add_argument("--config", type=Path, default=Path("config/vigil.yaml"))
        p.add_argument(
            "--agents", type=Path, default=Path("config/agents"), help="folder of agent configs"
        )
    run_p.add_argument("--state", type=Path, default=Path(".vigil"))
    run_p.add_argument(
        "--status-every",
        type=float,
        default=5.0,
        metavar="S",
        help="print a status line every S seconds (0: never)",
    )
    tok_p = sub.add_parser(
        "admin-token", help="create the API admin token once; write its SHA-256 beside it"
    )
    tok_p.add_argument("--secrets", type=Path, required=True, help="folder for the token")
    tok_p.add_argument(
        "--reader",
        action="store_true",
        help="also the dashboards' read-only token for the InfluxDB endpoint (reader.token)",
    )
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} (see vigil {name} --help)")
    sub.add_parser("storage", help="node operations (see vigil storage --help)")
    sub.add_parser("devices", help="add, disable, remove, configure (see vigil devices --help)")
    args = ap.parse_args(argv)
    try:
        if args.command == "validate-config":
            validate_config(args.config, args.agents)
            note = layout_note(args.config)
            if note:
                print(note)
            print("ok")
            return 0
        from stack.run import ensure_admin_token, run

        if args.command == "admin-token":
            token_file = args.secrets / "admin.token"
            ensure_admin_token(token_file, args.secrets / "admin.token.sha256")
            print(f"admin token in {token_file} (its SHA-256 in admin.token.sha256)")
            if args.reader:
                reader = args.secrets / "reader.token"
                ensure_admin_token(reader, args.secrets / "reader.token.sha256")
                print(f"reader token in {reader} (its SHA-256 in reader.token.sha256)")
            return 0
        return run(args.config, args.agents, args.state, args.status_every)
    except ConfigError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
