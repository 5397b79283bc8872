"""``vigil storage status|fail|recover|add|remove|resume|strategy|repair|replicas|delete|purge``.

Each command prints a readable table (``--json`` for the same as JSON) and shows progress on
stderr during long work. Exit status: 0 done, 1 the operation failed (what to do is said),
2 a bad configuration or argument.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from stack import local_servers
from stack.process import free_port
from storage_nodes.layout import STRATEGIES, LayoutError
from storage_nodes.ops import MoveReport, OperationError, StorageOps
from storage_nodes.repair import RepairProgress, RepairReport
from vigil.config_core import ConfigError
from vigil.settings import VigilConfig, load_config

LOCAL_START_TIMEOUT_S = 90.0


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Columns padded to their widest cell."""
    cells = [[str(h) for h in header], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _ago(ms: int | None) -> str:
    if ms is None:
        return "never"
    s = max(0.0, time.time() - ms / 1000)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago"


def format_status(st: dict[str, Any]) -> str:
    rows = []
    for s in st["servers"]:
        h = s.get("hints") or {}
        rows.append(
            (
                s["name"],
                s["url"],
                s["state"],
                s.get("layout_state", ""),
                f"{100 * s['share']:.1f}%",
                h.get("points", 0),
                _ago(s.get("last_seen_ms")),
            )
        )
    head = (
        f"layout version {st['layout_version']}, strategy {st['strategy']}, "
        f"replication factor {st['replication_factor']}" + (", data moving" if st["moving"] else "")
    )
    return (
        head
        + "\n"
        + table(rows, ("SERVER", "URL", "STATE", "LAYOUT", "SHARE", "HINTS", "LAST SEEN"))
    )


def format_repair(report: RepairReport) -> str:
    rows = [(n, c) for n, c in sorted(report.copied.items())]
    text = (
        f"repaired {report.series} series in {report.seconds:.1f} s: "
        f"{report.buckets_differing} bucket(s) differed, "
        f"{sum(report.copied.values())} point(s) copied"
    )
    if rows:
        text += "\n" + table(rows, ("SERVER", "POINTS COPIED"))
    for name, series in sorted(report.misplaced.items()):
        text += f"\n{name} holds {len(series)} series it does not own (a move cleans them up)"
    for err in report.errors:
        text += f"\nerror: {err}"
    return text


def format_move(report: MoveReport) -> str:
    text = (
        f"layout {report.from_version} -> {report.to_version}: {report.series_moved} series "
        f"moved in {report.seconds:.1f} s"
    )
    rows = [
        (n, report.points_copied.get(n, 0), report.series_deleted.get(n, 0))
        for n in sorted(set(report.points_copied) | set(report.series_deleted))
    ]
    if rows:
        text += "\n" + table(rows, ("SERVER", "POINTS COPIED", "SERIES DELETED"))
    return text


class _Progress:
    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.5 and done < total):
            return
        self._last = now
        print(f"{phase}: {done}/{total}", file=self.out, flush=True)

    def repair(self, p: RepairProgress) -> None:
        self(f"repair ({p.points_copied} points copied)", p.series_done, p.series_total)


def _pending(servers: Sequence[str]) -> str:
    if not servers:
        return "; applied on every server"
    return f"; not yet applied on {', '.join(servers)} (the maintenance does it again)"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vigil storage", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("config/vigil.yaml"))
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="every server: state, share, hints, last seen")
    for verb, text in (("fail", "drain a server on purpose"), ("recover", "undo fail")):
        sub.add_parser(verb, help=text).add_argument("server")
    add = sub.add_parser("add", help="join a running, provisioned server and move its share")
    add.add_argument("server")
    add.add_argument("url", nargs="?", help="its InfluxDB URL, e.g. http://127.0.0.1:8090")
    add.add_argument(
        "--local",
        action="store_true",
        help="under `vigil run`: have the launcher start and provision the server first",
    )
    remove = sub.add_parser("remove", help="move a server's share away, then drop it")
    remove.add_argument("server")
    for p in (add, remove):
        p.add_argument("--state", type=Path, default=Path(".vigil"), help="vigil run's state")
    sub.add_parser("resume", help="finish a move that was interrupted")
    strat = sub.add_parser("strategy", help="consistent (ring) or full (every server)")
    strat.add_argument("strategy", choices=STRATEGIES)
    rep = sub.add_parser("repair", help="anti-entropy over every series, now")
    rep.add_argument("--rate", type=float, default=None, help="points/s (default: unlimited)")
    dele = sub.add_parser("delete", help="delete a series (or its points before a time)")
    dele.add_argument("device")
    dele.add_argument("metric")
    dele.add_argument("--before", type=int, default=None, help="epoch ms (default: all)")
    purge = sub.add_parser("purge", help="delete every series' points before a time")
    purge.add_argument("--before", type=int, required=True, help="epoch ms")
    repl = sub.add_parser("replicas", help="the servers of one series")
    repl.add_argument("device")
    repl.add_argument("metric")
    return ap


def _add_url(args: argparse.Namespace, progress: _Progress) -> str:
    """The URL of the server to add: given, or (``--local``) of one the launcher starts."""
    if not args.local:
        if not args.url:
            raise OperationError("give the server's URL, or --local under `vigil run`")
        return str(args.url)
    if not (args.state / "stack.json").exists():
        raise OperationError(f"--local needs `vigil run` running with state {args.state}")
    known = {s.name: s for s in local_servers.requested(args.state)}
    server = known.get(args.server) or local_servers.LocalServer(args.server, free_port())
    local_servers.request(args.state, server)
    progress(f"waiting for the launcher to start {args.server}", 0, 1)
    url = local_servers.wait_ready(args.state, args.server, LOCAL_START_TIMEOUT_S)
    if url is None:
        raise OperationError(
            f"the launcher did not start {args.server} within {LOCAL_START_TIMEOUT_S:g} s; "
            f"see {args.state}/logs/{args.server}.log"
        )
    return url


def writer_dirs(config: VigilConfig) -> list[Path]:
    return config.ingest.hint_dirs()


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(str(args.config))
    except ConfigError as exc:
        print(f"vigil storage: {exc}", file=err)
        return 2
    try:
        ops = StorageOps(config.storage, writer_dirs=writer_dirs(config))
    except LayoutError as exc:
        print(f"vigil storage: {exc}", file=err)
        return 2
    progress = _Progress(err, not args.json)
    try:
        result: Any
        text: str
        if args.command == "status":
            result = ops.status()
            text = format_status(result)
        elif args.command in ("fail", "recover"):
            layout = getattr(ops, args.command)(args.server)
            result = {"server": args.server, "layout_version": layout.version}
            text = f"{args.server}: {layout.server(args.server).state} (layout {layout.version})"
        elif args.command == "replicas":
            result = ops.replicas(args.device, args.metric)
            text = table([(i + 1, n) for i, n in enumerate(result["replicas"])], ("#", "SERVER"))
            leaving = result["owners"][len(result["replicas"]) :]
            if leaving:
                text += f"\n(during the move also on: {', '.join(leaving)})"
        elif args.command == "delete":
            done = ops.delete_series(args.device, args.metric, args.before)
            result = {
                "series": f"{args.device}/{args.metric}",
                "before_ms": args.before,
                **done.to_json(),
            }
            text = (
                f"deleted {args.device}/{args.metric}"
                + ("" if args.before is None else f" before {args.before}")
                + f" (layout {done.layout.version}): it will not come back from hints or repair"
                + _pending(done.pending)
            )
        elif args.command == "purge":
            done = ops.delete_before(args.before)
            result = {"series": "*", "before_ms": args.before, **done.to_json()}
            text = (
                f"deleted every series' points before {args.before} (layout "
                f"{done.layout.version}): they will not come back from hints or repair"
                + _pending(done.pending)
            )
        elif args.command == "repair":
            report = ops.repair(points_per_s=args.rate, on_progress=progress.repair)
            result = report.to_json()
            text = format_repair(report)
        else:
            if args.command == "add":
                move = ops.add(args.server, _add_url(args, progress), progress)
            elif args.command == "remove":
                move = ops.remove(args.server, progress)
                if any(s.name == args.server for s in local_servers.requested(args.state)):
                    local_servers.forget(args.state, args.server)  # the launcher stops it
            elif args.command == "strategy":
                move = ops.set_strategy(args.strategy, progress)
            else:
                move = ops.resume(progress)
            result = move.to_json()
            text = format_move(move)
    except (OperationError, LayoutError) as exc:
        print(f"vigil storage {args.command}: {exc}", file=err)
        return 1
    finally:
        ops.close()
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text, file=out)
    return 0
