"""``vigil`` commands over the API, for users and admins: readable tables, ``--json`` for the
API's own answer.

    vigil login --api URL --token TOKEN      remember where and who (a file, mode 0600)
    vigil logout | whoami
    vigil users list | add NAME [--role user|admin] | remove NAME | token NAME [--label L]
    vigil rules list | show ID | delete ID
    vigil rules add ID --metric M [--device D | --symbol S] [--above X | --below X]
                       [--clear X] [--for S] [--kind K] [--low X --high X]
                       [--percent P --window S --direction rise|fall|any] [--severity S]
    vigil rules edit ID [the same options]   change only what is given (PATCH)
    vigil alerts [--device D] [--rule R] [--severity S] [--kind K]
    vigil notifications [--state S] [--channel C] [--rule R] [--device D]
    vigil silences list [--state S] | add --match LABEL=PATTERN ... --for S [--comment C]
                   | expire ID
    vigil recipients [show | set EMAIL ...]   where your alerts are emailed
    vigil webhooks list | add NAME URL [--secret S] | remove NAME
    vigil telegram show | set CHAT | clear
    vigil query DEVICE [METRIC [--latest | --mean N | --since MS --until MS --limit N]]

Where and who: ``--api`` and ``--token``, else ``VIGIL_API_URL`` and ``VIGIL_API_TOKEN``, else
the login file (``--login-file``, ``VIGIL_LOGIN_FILE``, default ``~/.config/vigil/login.json``),
else the running stack's ``.vigil/stack.json`` (its admin token). ``--user`` names whose
recipients, webhooks or chat (default: the token's own user).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stack.devices_cli import CliError, call, use_stack_ca
from vigil.atomic import write_atomic

COMMANDS = (
    "login",
    "logout",
    "whoami",
    "users",
    "rules",
    "alerts",
    "notifications",
    "silences",
    "recipients",
    "webhooks",
    "subscriptions",
    "telegram",
    "query",
)


def default_login_file() -> Path:
    env = os.environ.get("VIGIL_LOGIN_FILE")
    return Path(env) if env else Path.home() / ".config" / "vigil" / "login.json"


def target(args: argparse.Namespace) -> tuple[str, str]:
    url = args.api or os.environ.get("VIGIL_API_URL")
    token = args.token or os.environ.get("VIGIL_API_TOKEN")
    for source in (args.login_file, args.stack_dir / "stack.json"):
        if url and token:
            break
        try:
            info = json.loads(Path(source).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        nested = info.get("api")
        api: dict[str, Any] = nested if isinstance(nested, dict) else info
        url = url or api.get("url")
        token = token or api.get("token") or api.get("admin_token")
        use_stack_ca(api)
    if not (url and token):
        raise CliError(
            "no API to talk to: vigil login --api URL --token TOKEN, or give --api and "
            "--token (VIGIL_API_URL, VIGIL_API_TOKEN), or start the stack (make run)"
        )
    return str(url).rstrip("/"), str(token)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as aligned columns (``(title, key)``); the last column is not padded."""
    if not rows:
        return "(none)"
    cells = [[title for title, _ in columns]]
    for row in rows:
        cells.append([_time(v) if key.endswith("_at") else _cell(v) for _, key in columns
                      for v in (row.get(key),)])  # fmt: skip
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)) + "  " + r[-1]
        for r in cells
    ).rstrip()


def _time(value: Any) -> str:
    """An epoch-ms time as ``2026-12-06 20:00:53`` (UTC)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return _cell(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def _q(path: str, **params: Any) -> str:
    chosen = {k: v for k, v in params.items() if v is not None}
    return path + ("?" + urllib.parse.urlencode(chosen) if chosen else "")


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# -- rules ------------------------------------------------------------------------------
RULE_FLAGS = (
    ("kind", str, None),
    ("metric", str, None),
    ("device", str, None),
    ("symbol", str, None),
    ("clear", float, None),
    ("for", float, "for_s"),
    ("low", float, None),
    ("high", float, None),
    ("percent", float, None),
    ("window", float, "window_s"),
    ("direction", str, None),
    ("severity", str, None),
    ("name", str, None),
)


def _rule_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for flag, _kind, field in RULE_FLAGS:
        value = getattr(args, flag.replace("-", "_") + "_", None)
        if value is not None:
            body[field or flag] = value
    for op in ("above", "below"):
        value = getattr(args, op, None)
        if value is not None:
            body["op"], body["threshold"] = op, value
    if args.disabled:
        body["enabled"] = False
    if args.enabled:
        body["enabled"] = True
    return body


def _rule_options(p: argparse.ArgumentParser) -> None:
    for flag, kind, _field in RULE_FLAGS:
        p.add_argument(f"--{flag}", type=kind, dest=flag + "_")
    p.add_argument("--above", type=float, help="threshold: fire above this")
    p.add_argument("--below", type=float, help="threshold: fire below this")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--disabled", action="store_true")
    state.add_argument("--enabled", action="store_true")


RULE_COLUMNS = (
    ("RULE", "id"),
    ("OWNER", "owner"),
    ("KIND", "kind"),
    ("ON", "on"),
    ("CONDITION", "condition"),
    ("SEVERITY", "severity"),
    ("ON?", "enabled"),
)


def _rule_row(r: dict[str, Any]) -> dict[str, Any]:
    on = f"symbol {r['symbol']}" if r.get("symbol") else r.get("device") or "every device"
    kind = r.get("kind", "threshold")
    if kind == "band":
        cond = f"{r.get('metric')} outside {r.get('low')}..{r.get('high')}"
    elif kind == "change":
        cond = (
            f"{r.get('metric')} {r.get('direction', 'any')} {r.get('percent')}% in "
            f"{r.get('window_s')} s"
        )
    elif kind == "nodata":
        cond = f"no {r.get('metric')} for {r.get('for_s')} s"
    elif kind == "offline":
        cond = f"offline for {r.get('for_s') or 0} s"
    else:
        cond = f"{r.get('metric')} {r.get('op')} {r.get('threshold')}"
        if r.get("for_s"):
            cond += f" for {r['for_s']} s"
        if r.get("clear") is not None:
            cond += f", clear {r['clear']}"
    return {**r, "on": on, "condition": cond}


# -- the commands -----------------------------------------------------------------------
Api = Callable[..., Any]


def _me(api: Api, args: argparse.Namespace) -> str:
    return str(args.user or api("GET", "/me")["name"])


def run(args: argparse.Namespace) -> str:
    cmd = args.command
    if cmd == "logout":
        try:
            args.login_file.unlink()
        except FileNotFoundError:
            return "not logged in"
        return f"logged out ({args.login_file} removed)"
    url, token = target(args)

    def api(method: str, path: str, body: Any = None) -> Any:
        return call(url, token, method, path, body)

    def out(answer: Any, text: Callable[[Any], str]) -> str:
        return json.dumps(answer, indent=2) if args.json else text(answer)

    if cmd == "login":
        me = api("GET", "/me")
        write_atomic(args.login_file, json.dumps({"url": url, "token": token}) + "\n", mode=0o600)
        return out(me, lambda m: f"logged in to {url} as {m['name']} ({m['role']})")
    if cmd == "whoami":
        return out(api("GET", "/me"), lambda m: f"{m['name']} ({m['role']}) at {url}")
    if cmd == "users":
        if args.action == "list":
            return out(
                api("GET", "/users"),
                lambda a: table(
                    a["users"], (("USER", "name"), ("ROLE", "role"), ("TOKENS", "tokens"))
                ),
            )
        if args.action == "add":
            made = api("POST", "/users", {"name": args.name, "role": args.role})
            return out(
                made,
                lambda m: (
                    f"added {m['name']} ({m['role']}); token {m['token']['token']} "
                    "(shown only now: hand it over)"
                ),
            )
        if args.action == "remove":
            api("DELETE", f"/users/{_seg(args.name)}")
            return out({}, lambda _: f"removed {args.name}")
        made = api("POST", f"/users/{_seg(args.name)}/tokens", {"label": args.label or ""})
        return out(made, lambda m: f"token {m['token']} for {args.name} (shown only now)")
    if cmd == "rules":
        if args.action == "list":
            return out(
                api("GET", "/rules"),
                lambda a: table([_rule_row(r) for r in a["rules"]], RULE_COLUMNS),
            )
        path = f"/rules/{_seg(args.id)}"
        if args.action == "show":
            return out(api("GET", path), lambda r: table([_rule_row(r)], RULE_COLUMNS))
        if args.action == "delete":
            api("DELETE", path)
            return out({}, lambda _: f"deleted rule {args.id}")
        body = _rule_body(args)
        if args.action == "add":
            made = api("POST", "/rules", {"id": args.id, **body})
        else:
            if not body:
                raise CliError("say what to change (see vigil rules edit --help)")
            made = api("PATCH", path, body)
        rule = _rule_row(made.get("rule", made))
        note = "" if made.get("pushed", True) else " (not yet at the broker)"
        return out(made, lambda _: f"rule {rule['id']}: {rule['condition']} on {rule['on']}{note}")
    if cmd == "alerts":
        answer = api(
            "GET",
            _q("/alerts", device=args.device, rule_id=args.rule, severity=args.severity,
               kind=args.kind, limit=args.limit),
        )  # fmt: skip
        return out(
            answer,
            lambda a: table(
                a["alerts"],
                (
                    ("RULE", "rule_id"),
                    ("DEVICE", "device"),
                    ("SEVERITY", "severity"),
                    ("OWNER", "owner"),
                    ("SINCE (UTC)", "started_at"),
                    ("WHAT", "detail"),
                ),
            ),
        )
    if cmd == "notifications":
        answer = api(
            "GET",
            _q("/notifications", state=args.state, channel=args.channel, rule_id=args.rule,
               device=args.device, owner=args.owner, limit=args.limit),
        )  # fmt: skip

        def rows(a: Any) -> str:
            return table(
                [
                    {**n, "what": "; ".join(f"{x['state']} {x['summary']}" for x in n["alerts"])}
                    for n in a["notifications"]
                ],
                (("ID", "id"), ("OWNER", "owner"), ("AT (UTC)", "created_at"),
                 ("CHANNEL", "channel"), ("STATE", "state"), ("TRIES", "attempts"),
                 ("WHAT", "what")),
            )  # fmt: skip

        return out(answer, rows)
    if cmd == "silences":
        if args.action == "list":
            return out(
                api("GET", _q("/silences", state=args.state)),
                lambda a: table(
                    a["silences"],
                    (
                        ("ID", "id"),
                        ("OWNER", "owner"),
                        ("STATE", "state"),
                        ("MATCHES", "matchers"),
                        ("COMMENT", "comment"),
                    ),
                ),
            )
        if args.action == "expire":
            return out(
                api("DELETE", f"/silences/{_seg(args.id)}"), lambda s: f"silence {s['id']} expired"
            )
        matchers = {}
        for item in args.match:
            label, sep, pattern = item.partition("=")
            if not sep:
                raise CliError(f"--match {item!r}: give LABEL=PATTERN, e.g. device=dev-*")
            matchers[label] = pattern
        made = api(
            "POST",
            "/silences",
            {"matchers": matchers, "duration_s": args.for_s, "comment": args.comment},
        )
        return out(made, lambda s: f"silence {s['id']} {s['state']} until {s['ends_at']}")
    if cmd == "recipients":
        path = f"/users/{_seg(_me(api, args))}/recipients"
        if args.action == "set":
            answer = api("PUT", path, {"emails": args.emails})
        else:
            answer = api("GET", path)
        return out(answer, lambda a: ", ".join(a["emails"]) or "(none)")
    if cmd == "webhooks":
        path = f"/users/{_seg(_me(api, args))}/webhooks"
        hooks = api("GET", path)["webhooks"]
        if args.action == "list":
            return out(
                {"webhooks": hooks},
                lambda a: table(a["webhooks"], (("NAME", "name"), ("URL", "url"))),
            )
        keep = [{"name": h["name"], "url": h["url"]} for h in hooks if h["name"] != args.name]
        if args.action == "remove":
            answer = api("PUT", path, {"webhooks": keep})
            return out(answer, lambda _: f"webhook {args.name} removed")
        new: dict[str, Any] = {"name": args.name, "url": args.url}
        if args.secret:
            new["secret"] = args.secret
        answer = api("PUT", path, {"webhooks": [*keep, new]})
        made = next(h for h in answer["webhooks"] if h["name"] == args.name)
        return out(
            answer,
            lambda _: (
                f"webhook {args.name} -> {args.url}"
                + (
                    f"; signing secret {made['secret']} (shown only now)"
                    if "secret" in made
                    else ""
                )
            ),
        )
    if cmd == "subscriptions":
        path = f"/users/{_seg(_me(api, args))}/subscriptions"
        if args.action in ("follow", "unfollow", "set"):
            have = set(api("GET", path)["symbols"])
            wanted = {s.upper() for s in args.symbols}
            symbols = (
                have | wanted
                if args.action == "follow"
                else have - wanted
                if args.action == "unfollow"
                else wanted
            )
            answer = api("PUT", path, {"symbols": sorted(symbols)})
        else:
            answer = api("GET", path)
        return out(
            answer,
            lambda a: (
                table(
                    [{"symbol": s, "agent": a["agents"].get(s) or "-"} for s in a["symbols"]],
                    (("SYMBOL", "symbol"), ("FETCHED BY", "agent")),
                )
                if a["symbols"]
                else "(none)"
            ),
        )
    if cmd == "telegram":
        path = f"/users/{_seg(_me(api, args))}/telegram"
        if args.action == "show":
            answer = api("GET", path)
        else:
            answer = api("PUT", path, {"chat_id": args.chat if args.action == "set" else None})
        return out(answer, lambda a: a["chat_id"] or "(none)")
    # query
    if args.metric is None:
        return out(
            api("GET", f"/devices/{_seg(args.device)}/metrics"),
            lambda a: (
                "\n".join(a["metrics"])
                + (
                    f"\n(servers not answering: {', '.join(a['unreachable'])})"
                    if a["unreachable"]
                    else ""
                )
            ),
        )
    base = f"/devices/{_seg(args.device)}/metrics/{_seg(args.metric)}"
    if args.latest:
        return out(
            api("GET", base + "/latest"), lambda p: f"{p['value']} at {p['ts']} (id {p['id']})"
        )
    if args.mean is not None:
        return out(
            api("GET", _q(base + "/mean", n=args.mean)),
            lambda m: f"mean {m['mean']} of the last {m['count']}",
        )
    answer = api("GET", _q(base + "/history", since=args.since, until=args.until, limit=args.limit))
    return out(
        answer, lambda a: table(a["points"], (("TS", "ts"), ("ID", "id"), ("VALUE", "value")))
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vigil", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--api", help="the API's URL")
    ap.add_argument("--token", help="a bearer token")
    ap.add_argument("--login-file", type=Path, default=None)
    ap.add_argument(
        "--stack-dir", type=Path, default=Path(".vigil"), help="the running stack's folder"
    )
    ap.add_argument("--json", action="store_true", help="print the API's JSON answer")
    ap.add_argument("--user", help="whose recipients, webhooks, chat (default: yours)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("login", help="check --api and --token and remember them")
    sub.add_parser("logout", help="forget them")
    sub.add_parser("whoami")

    users = sub.add_parser("users").add_subparsers(dest="action", required=True)
    users.add_parser("list")
    add = users.add_parser("add")
    add.add_argument("name")
    add.add_argument("--role", default="user", choices=("user", "admin"))
    users.add_parser("remove").add_argument("name")
    tok = users.add_parser("token", help="issue another token")
    tok.add_argument("name")
    tok.add_argument("--label")

    rules = sub.add_parser("rules").add_subparsers(dest="action", required=True)
    rules.add_parser("list")
    for name in ("show", "delete"):
        rules.add_parser(name).add_argument("id")
    for name in ("add", "edit"):
        p = rules.add_parser(name)
        p.add_argument("id")
        _rule_options(p)

    alerts = sub.add_parser("alerts", help="the alerts firing now")
    notes = sub.add_parser("notifications", help="your delivery history")
    for p in (alerts, notes):
        p.add_argument("--device")
        p.add_argument("--rule")
        p.add_argument("--limit", type=int)
    alerts.add_argument("--severity")
    alerts.add_argument("--kind")
    notes.add_argument("--state")
    notes.add_argument("--channel")
    notes.add_argument("--owner")

    sil = sub.add_parser("silences").add_subparsers(dest="action", required=True)
    sil.add_parser("list").add_argument("--state")
    sadd = sil.add_parser("add")
    sadd.add_argument("--match", action="append", required=True, metavar="LABEL=PATTERN")
    sadd.add_argument("--for", dest="for_s", type=float, required=True, metavar="SECONDS")
    sadd.add_argument("--comment", default="")
    sil.add_parser("expire").add_argument("id")

    rec = sub.add_parser("recipients").add_subparsers(dest="action")
    rec.add_parser("show")
    rec.add_parser("set").add_argument("emails", nargs="*")
    hooks = sub.add_parser("webhooks").add_subparsers(dest="action", required=True)
    hooks.add_parser("list")
    hadd = hooks.add_parser("add")
    hadd.add_argument("name")
    hadd.add_argument("url")
    hadd.add_argument("--secret")
    hooks.add_parser("remove").add_argument("name")
    subs = sub.add_parser("subscriptions", help="the share symbols you follow").add_subparsers(
        dest="action"
    )
    subs.add_parser("show")
    for name in ("follow", "unfollow", "set"):
        subs.add_parser(name).add_argument("symbols", nargs="*" if name == "set" else "+")
    tg = sub.add_parser("telegram").add_subparsers(dest="action", required=True)
    tg.add_parser("show")
    tg.add_parser("set").add_argument("chat")
    tg.add_parser("clear")

    q = sub.add_parser("query", help="a device's stored readings")
    q.add_argument("device")
    q.add_argument("metric", nargs="?", help="leave out: the device's metrics")
    which = q.add_mutually_exclusive_group()
    which.add_argument("--latest", action="store_true")
    which.add_argument("--mean", type=int, metavar="N")
    q.add_argument("--since", type=int, metavar="MS")
    q.add_argument("--until", type=int, metavar="MS")
    q.add_argument("--limit", type=int)
    return ap


GLOBAL_WITH_VALUE = ("--api", "--token", "--login-file", "--stack-dir", "--user")


def hoist(argv: Sequence[str]) -> list[str]:
    """The global options moved before the command, wherever they were given
    (``vigil rules list --json`` as ``vigil --json rules list``)."""
    front, rest = _split(argv)
    return front + rest


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if arg == "--json":
            front.append(arg)
        elif name in GLOBAL_WITH_VALUE:
            front.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                i += 1
                front.append(argv[i])
        else:
            rest.append(arg)
        i += 1
    return front, rest


def wants(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is one of these commands."""
    _front, rest = _split(argv)
    return bool(rest) and rest[0] in COMMANDS


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(hoist(sys.argv[1:] if argv is None else argv))
    if args.login_file is None:
        args.login_file = default_login_file()
    try:
        print(run(args))
    except CliError as exc:
        print(f"vigil {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
