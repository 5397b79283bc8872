"""Command line of the broker's provisioning.

``python -m broker provision --dir DIR --secrets DIR --host H --port P --device ID ...``
writes Mosquitto's files (hashed password file, ACL, reserved client ids, mosquitto.conf) into
``--dir`` and one password file per user into ``--secrets``, generating each password once and
keeping it on later runs. The broker loads Vigil's client-id plugin, built here (cached in
build/mosquitto/) unless ``--plugin PATH`` names where the broker's image has it.
``python -m broker acl [--topic-root R]`` prints the ACL (nothing is written).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from broker.plugin_build import PluginBuildError
from broker.provision import SERVICE_ACCESS, BrokerFiles, TlsListener, provision, render_acl
from vigil.names import InvalidName, check_name
from vigil.topics import TopicError, Topics


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: must be 1-65535")
    return port


def _topics(root: str) -> Topics:
    try:
        return Topics(root)
    except TopicError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device(name: str) -> str:
    try:
        check_name(name, "device id")
    except InvalidName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name in SERVICE_ACCESS:
        raise argparse.ArgumentTypeError(
            f"device id {name!r} is a service user: a device cannot take its rights"
        )
    return name


def _plugin(text: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise argparse.ArgumentTypeError(f"invalid plugin path {text!r}: must be absolute")
    return path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m broker", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "provision",
        help="write the password file, ACL, mosquitto.conf and per-user password files",
    )
    p.add_argument("--dir", type=Path, required=True, help="broker folder (conf, passwd, acl)")
    p.add_argument("--secrets", type=Path, required=True, help="folder of <user>.password")
    p.add_argument("--host", default="127.0.0.1", help="address the listener binds")
    p.add_argument("--port", type=_port, default=1883, help="listener port")
    p.add_argument(
        "--device",
        type=_device,
        action="append",
        default=[],
        dest="devices",
        metavar="ID",
        help="a device that gets credentials (repeatable)",
    )
    p.add_argument(
        "--topic-root",
        type=_topics,
        default=Topics(),
        dest="topics",
        metavar="ROOT",
        help="topic root of the ACL (default: vigil)",
    )
    p.add_argument(
        "--run-as",
        metavar="USER",
        help="user Mosquitto runs as (default: whoever runs this command)",
    )
    p.add_argument(
        "--log-stderr",
        action="store_true",
        help="Mosquitto logs to stderr instead of DIR/mosquitto.log (containers)",
    )
    p.add_argument(
        "--plugin",
        type=_plugin,
        metavar="PATH",
        help="absolute path the broker loads Vigil's client-id plugin from, as built into "
        "its image (default: build it here with cc, cached in build/mosquitto/)",
    )
    p.add_argument(
        "--dynsec-plugin",
        type=_plugin,
        metavar="PATH",
        help="absolute path of Mosquitto's dynamic-security plugin in the broker's image "
        "(default: where Debian's mosquitto package installs it)",
    )

    p.add_argument(
        "--allow-plain-remote",
        action="store_true",
        help="let the plain listener bind a non-loopback address (a private network only)",
    )
    p.add_argument(
        "--tls-port",
        type=_port,
        metavar="PORT",
        help="also listen with TLS on PORT (8883 by convention), for devices",
    )
    p.add_argument(
        "--tls-host",
        default="0.0.0.0",  # noqa: S104 - devices reach the TLS listener from anywhere
        help="address the TLS listener binds",
    )
    p.add_argument(
        "--tls-ca-dir",
        type=Path,
        metavar="DIR",
        help="the local CA (ca.crt, ca.key), generated once (default: SECRETS/tls)",
    )
    p.add_argument(
        "--tls-ca-copy",
        type=Path,
        metavar="FILE",
        help="also write the CA's certificate (not its key) to FILE, for the devices",
    )
    p.add_argument(
        "--tls-name",
        action="append",
        default=[],
        dest="tls_names",
        metavar="NAME",
        help="a DNS name or address devices reach the broker by (repeatable; localhost, "
        "loopback and the host names are always in the certificate)",
    )

    a = sub.add_parser("acl", help="print the ACL for a topic root")
    a.add_argument(
        "--topic-root",
        type=_topics,
        default=Topics(),
        dest="topics",
        metavar="ROOT",
        help="topic root (default: vigil)",
    )
    return ap


def _provision(args: argparse.Namespace) -> BrokerFiles:
    tls = None
    if args.tls_port:
        tls = TlsListener(
            host=args.tls_host,
            port=args.tls_port,
            ca_dir=args.tls_ca_dir or args.secrets / "tls",
            names=tuple(args.tls_names),
            ca_copy=args.tls_ca_copy,
        )
    return provision(
        broker_dir=args.dir,
        secrets_dir=args.secrets,
        host=args.host,
        port=args.port,
        devices=list(dict.fromkeys(args.devices)),
        topics=args.topics,
        run_as=args.run_as,
        log_to_file=not args.log_stderr,
        plugin=args.plugin,
        dynsec_plugin=args.dynsec_plugin,
        tls=tls,
        allow_plain_remote=args.allow_plain_remote,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "acl":
        sys.stdout.write(render_acl(args.topics))
        return 0
    try:
        files = _provision(args)
    except (FileNotFoundError, PluginBuildError, ValueError) as exc:
        print(f"broker provision: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()
        print(f"broker provision: mosquitto_passwd failed: {detail or exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"broker provision: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"mosquitto.conf  {files.conf.resolve()}")
    print(f"password file   {files.passwd.resolve()} (services)")
    print(f"dynamic security {files.dynsec.resolve()} (devices)")
    print(f"acl             {files.acl.resolve()}")
    print(f"client ids      {files.client_ids.resolve()}")
    print(f"live client ids {files.live_client_ids.resolve()} (devices added through the API)")
    print(f"plugin          {files.plugin}")
    print(f"persistence     {files.persistence_dir.resolve()}")
    print(
        f"secrets         {files.secrets_dir.resolve()} ({len(files.creds)} users: "
        f"{', '.join(sorted(files.creds))})"
    )
    print(f"listener        {files.host}:{files.port}")
    if files.tls is not None:
        ca = files.tls.ca_dir / "ca.crt"
        print(f"tls listener    {files.tls.host}:{files.tls.port} (devices verify {ca.resolve()})")
    print(f"run             {' '.join(files.command())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
