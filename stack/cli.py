"""``vigil``: one command for the whole system.

vigil run                 start the local stack (make run)
vigil ingest|alert-engine|notifier|api [--config ...]
vigil agent --config config/agents/demo-1.yaml
vigil validate-config     check config/vigil.yaml and config/agents/*.yaml
    vigil admin-token --secrets DIR
                              create the API admin token once (DIR/admin.token)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from vigil.settings import ConfigError, load_agent_config, load_config

SERVICES = {
    "ingest": "ingest_service",
    "alert-engine": "alert_engine",
    "notifier": "notifier",
    "api": "api",
    "agent": "edge_agent",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    tok_p = sub.add_parser(
        "admin-token", help="create the API admin token once; write its SHA-256 beside it"
    )
    tok_p.add_argument("--secrets", type=Path, required=True, help="folder for the token")
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} (see vigil {name} --help)")
    args = ap.parse_args(argv)
    try:
        if args.command == "validate-config":
            load_config(args.config)
            for path in sorted(args.agents.glob("*.yaml")):
                load_agent_config(path)
            print("ok")
            return 0
        from stack.run import ensure_admin_token, run

        if args.command == "admin-token":
            token_file = args.secrets / "admin.token"
            ensure_admin_token(token_file, args.secrets / "admin.token.sha256")
            print(f"admin token in {token_file} (its SHA-256 in admin.token.sha256)")
            return 0
        return run(args.config, args.agents, args.state)
    except ConfigError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
