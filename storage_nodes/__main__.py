"""``python -m storage_nodes provision --config config/vigil.yaml --secrets DIR``: make the
InfluxDB users, database and grants on every server of the ring (idempotent; what
``vigil run`` does at every server start, and the compose ``setup`` service runs once).

Passwords: the services' one at ``storage.password_file``, the admin's and the read-only
viewer's as ``DIR/influxdb-<user>.password``; generated on first use, kept after."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from storage_nodes.client import StorageError
from storage_nodes.provision import credentials, provision_node
from vigil.config_core import ConfigError
from vigil.settings import load_config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m storage_nodes", description=__doc__.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="command", required=True)
    prov = sub.add_parser("provision", help="users, database and grants on every server")
    prov.add_argument("--config", type=Path, default=Path("config/vigil.yaml"))
    prov.add_argument("--secrets", type=Path, required=True, help="folder of the passwords")
    prov.add_argument(
        "--wait", type=float, default=120.0, help="seconds to wait for servers still starting"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        storage = load_config(args.config).storage
    except ConfigError as exc:
        print(f"python -m storage_nodes: {exc}", file=sys.stderr)
        return 2
    creds = credentials(storage, args.secrets)
    for node in storage.nodes:
        try:
            provision_node(node, storage, creds, args.wait)
        except StorageError as exc:
            print(f"python -m storage_nodes: cannot provision {node.name}: {exc}", file=sys.stderr)
            return 1
        print(
            f"{node.name}: {creds.service.username} (ALL) and {creds.viewer.username} (READ) "
            f"on {storage.database}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
