"""``vigil devices``: add, list, disable, enable and remove devices, and set their live
configuration, over the API (its admin token), while everything runs.

    vigil devices list
    vigil devices add ID [--description TEXT] [--password-file FILE]
    vigil devices disable|enable|remove ID
    vigil devices config ID [--interval S] [--batch N] [--tickers A,B] [--sensors FILE]
    vigil devices config ID --show | --clear

The API's URL and admin token come from ``--api`` and ``--token``, else the environment
(``VIGIL_API_URL``, ``VIGIL_API_TOKEN``), else the running stack's ``.vigil/stack.json``.
``--json`` prints the API's answer as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from vigil.atomic import write_atomic
from vigil.tls import TlsConfigError, client_context

TIMEOUT_S = 30.0
CA_ENV = "VIGIL_CA_FILE"


class CliError(Exception):
    pass


def _target(args: argparse.Namespace) -> tuple[str, str]:
    url = args.api or os.environ.get("VIGIL_API_URL")
    token = args.token or os.environ.get("VIGIL_API_TOKEN")
    if not (url and token):
        stack = args.state / "stack.json"
        try:
            info = json.loads(stack.read_text())
            url = url or info["api"]["url"]
            token = token or info["api"]["admin_token"]
            use_stack_ca(info["api"])
        except (OSError, ValueError, KeyError, TypeError):
            raise CliError(
                f"no API to talk to: give --api and --token (or VIGIL_API_URL and "
                f"VIGIL_API_TOKEN), or start the stack (make run) so {stack} names it"
            ) from None
    return str(url).rstrip("/"), str(token)


def _tls() -> ssl.SSLContext | None:
    """An https API is verified against VIGIL_CA_FILE when set (`vigil run` with TLS names
    its local CA in stack.json, which sets it), else against the system's CAs."""
    ca = os.environ.get(CA_ENV)
    return client_context(Path(ca)) if ca else None


def use_stack_ca(api: dict[str, Any]) -> None:
    """Trust the CA stack.json names for its API, unless VIGIL_CA_FILE says otherwise."""
    if isinstance(api.get("ca_file"), str):
        os.environ.setdefault(CA_ENV, api["ca_file"])


def call(url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    """One API request; the decoded answer (None for 204). CliError says what went wrong,
    with the problem's detail."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)  # noqa: S310 - http(s) URL of the API
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=_tls()) as resp:  # noqa: S310
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.reason
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(exc.read()).get("detail") or detail
        raise CliError(f"{method} {path}: {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError, TlsConfigError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the API at {url}: {reason}") from None
    return json.loads(raw) if raw else None


def _table(devices: list[dict[str, Any]]) -> str:
    rows = [("DEVICE", "OWNER", "SOURCE", "STATE", "CONFIG", "DESCRIPTION")]
    for d in devices:
        status = d.get("status") or {}
        state = "disabled" if d.get("disabled") else status.get("state", "never seen")
        source = "vigil.yaml" if d.get("configured") else "api" if d.get("added") else "seen"
        applied = status.get("config_version")
        config = "-" if d.get("config_version") is None else str(d["config_version"])
        if applied is not None and d.get("config_version") is not None:
            config += " (applied)" if applied == d["config_version"] else f" (agent: {applied})"
        owner = d.get("owner") or "-"
        rows.append((d["id"], owner, source, state, config, d.get("description", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
        for r in rows
    )


def _config_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.interval is not None:
        body["interval_s"] = args.interval
    if args.batch is not None:
        body["batch_max"] = args.batch
    if args.tickers is not None:
        body["tickers"] = [t for t in args.tickers.split(",") if t]
    if args.sensors is not None:
        try:
            body["sensors"] = json.loads(Path(args.sensors).read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"--sensors {args.sensors}: {exc}") from None
    if not body:
        raise CliError("say what to set (--interval, --batch, --tickers, --sensors), or --clear")
    return body


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vigil devices",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--api", help="the API's URL (default: from .vigil/stack.json)")
    ap.add_argument("--token", help="the admin token (default: from .vigil/stack.json)")
    ap.add_argument("--state", type=Path, default=Path(".vigil"), help="the stack's folder")
    ap.add_argument("--json", action="store_true", help="print the API's JSON answer")
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every device, its state and live configuration")
    add = sub.add_parser("add", help="add a device: prints its credentials (once)")
    add.add_argument("device")
    add.add_argument("--description", default="")
    add.add_argument("--owner", default="admin", help="the user it belongs to (default: admin)")
    add.add_argument("--password-file", type=Path, help="write the password here (mode 0600)")
    for name in ("disable", "enable", "remove"):
        sub.add_parser(name).add_argument("device")
    cfg = sub.add_parser("config", help="set, show or clear a device's live configuration")
    cfg.add_argument("device")
    cfg.add_argument("--interval", type=float, help="sampling interval, seconds")
    cfg.add_argument("--batch", type=int, help="readings per message at most")
    cfg.add_argument("--tickers", help="share symbols, comma-separated ('' for none)")
    cfg.add_argument("--sensors", help="a JSON file with the list of sensors")
    what = cfg.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true")
    what.add_argument("--clear", action="store_true", help="back to the agent's own file")
    return ap


def run(args: argparse.Namespace) -> str:
    url, token = _target(args)
    action = args.action
    if action == "list":
        answer = call(url, token, "GET", "/devices")
        return json.dumps(answer, indent=2) if args.json else _table(answer["devices"])
    device = args.device
    if action == "add":
        answer = call(
            url,
            token,
            "POST",
            "/devices",
            {"id": device, "description": args.description, "owner": args.owner},
        )
        if args.json:
            return json.dumps(answer, indent=2)
        creds, broker = answer["credentials"], answer["broker"]
        lines = [f"added {device}: broker {broker['host']}:{broker['port']}"]
        if args.password_file is not None:
            write_atomic(args.password_file, creds["password"] + "\n", mode=0o600)
            lines.append(f"  password in {args.password_file} (shown only now)")
            where = str(args.password_file)
        else:
            lines.append(f"  password {creds['password']}  (shown only now: keep it)")
            where = "<a file holding the password>"
        lines += [
            "  in the agent's YAML:",
            f"    device_id: {device}",
            f"    mqtt: {{client_id: {device}, username: {device}, password_file: {where}}}",
        ]
        return "\n".join(lines)
    if action in ("disable", "enable"):
        answer = call(url, token, "POST", f"/devices/{device}/{action}")
        return json.dumps(answer, indent=2) if args.json else f"{device} {action}d"
    if action == "remove":
        call(url, token, "DELETE", f"/devices/{device}")
        return "{}" if args.json else f"{device} removed"
    # config
    if args.show:
        answer = call(url, token, "GET", f"/devices/{device}/config")
    elif args.clear:
        answer = call(url, token, "DELETE", f"/devices/{device}/config")
    else:
        answer = call(url, token, "PUT", f"/devices/{device}/config", _config_body(args))
    if args.json or args.show:
        return json.dumps(answer, indent=2)
    if args.clear:
        return f"{device}: live configuration removed (back to the agent's file)"
    note = "" if answer.get("pushed") else " (the broker has not acknowledged it yet)"
    return f"{device}: live configuration version {answer['version']} published{note}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(run(args))
    except CliError as exc:
        print(f"vigil devices: {exc}", file=sys.stderr)
        return 1
    return 0
