"""The storage cluster as one InfluxDB 1.x (issue 10.1): ``/ping``, ``/query`` and
``/write`` on their own port (``api.influx_port``), so Grafana, Chronograf, the ``influx``
CLI and Telegraf's ``outputs.influxdb`` talk to the whole cluster with Vigil's auth in front.

Answers are InfluxDB's (``{"results": [...]}``, ``{"error": "..."}``), not problem+json:
the clients parse them.

- Credentials: the user name and a Vigil token as the password (``u``/``p``, or basic
  auth), or ``Authorization: Bearer|Token <token>``. A user sees and writes only their own
  devices (and the quotes); the admin everything.
- ``SELECT``: each (measurement, device) series the statement may touch is asked of its
  live replicas, rendered again with ``device = '<it>'`` (and a deletion's cut-off) added;
  the answer of the replica holding the most matching points is taken whole (a series
  lives whole on each replica, so an aggregate over one series comes from one server).
  Series are then a union; rows of several devices in one output series merge by time
  only when each row is a stored point, else the statement is refused with the reason.
- ``SHOW``: asked of every server that is up, the answers united (for a user, narrowed to
  their devices).
- ``/write``: line protocol, each field one reading through the same validation and
  storage as ``POST /ingest`` (204 once stored at the configured consistency).
"""

from __future__ import annotations

import base64
import gzip
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, g, request

from api import auth, db
from api.auth import check_token, hash_token
from api.db import Caller
from api.influxql import (
    Binary,
    Call,
    CreateDatabase,
    Field,
    Ident,
    InfluxQLError,
    Measurement,
    Num,
    Regex,
    Select,
    Show,
    Statement,
    and_where,
    named_values,
    narrowed,
    parse_query,
    render,
    tag_equals,
)
from api.owners import may_see, owned_devices
from api.resources import ApiResources, resources
from storage_nodes import StorageError
from storage_nodes.cluster import series_key
from vigil.names import is_name

VERSION = "1.6-vigil"
MAX_WRITE_BYTES = 16 * 1024 * 1024
EPOCHS = {"ns": 1, "n": 1, "u": 1_000, "µ": 1_000, "ms": 1_000_000, "s": 10**9,
          "m": 60 * 10**9, "h": 3600 * 10**9}  # fmt: skip


class InfluxError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StatementError(Exception):
    """One statement's error: the others still run (InfluxDB's ``statement_id`` error)."""


def _json(body: object, status: int = 200) -> Response:
    pretty = request.args.get("pretty") == "true"
    text = json.dumps(body, indent=4 if pretty else None, separators=None if pretty else (",", ":"))
    return Response(text + "\n", status, mimetype="application/json")


# -- credentials ---------------------------------------------------------------------------
def _credentials() -> tuple[str | None, str | None]:
    """(user, token) from ``u``/``p``, basic auth, or a Bearer/Token header."""
    header = request.headers.get("Authorization", "").strip()
    scheme, _, rest = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, token = base64.b64decode(rest.strip(), validate=True).decode().partition(":")
        except ValueError:
            raise InfluxError(401, "unable to parse authentication credentials") from None
        return user or None, token
    if scheme.lower() in ("bearer", "token"):
        token = rest.strip()
        user, sep, after = token.partition(":")  # InfluxDB 1.8's "Token user:password"
        return (user, after) if sep else (None, token)
    return request.values.get("u"), request.values.get("p")


#: who holds the reader token (api.reader_token_sha256_file): dashboards
READER_USER = "reader"


def _is_reader(who: Caller) -> bool:
    return who.user == READER_USER and who.role == "reader"


def _authenticate() -> Caller:
    user, token = _credentials()
    if not token:
        raise InfluxError(401, "unable to parse authentication credentials")
    if len(token) > auth.MAX_TOKEN_CHARS:
        raise InfluxError(401, "authorization failed")
    reader: str | None = current_app.config["READER_TOKEN_SHA256"]
    if reader is not None and hmac.compare_digest(hash_token(token), reader):
        # Reads every device's series and writes nothing; the rest of the API refuses it.
        if user not in (None, READER_USER):
            raise InfluxError(401, "authorization failed")
        return Caller(READER_USER, "reader")
    who = check_token(token, current_digest())
    if who is None or (user is not None and user != who.user):
        raise InfluxError(401, "authorization failed")
    return who


def current_digest() -> str | None:
    digest: str | None = current_app.config["ADMIN_TOKEN_SHA256"]
    return digest


def _visible_regex(who: Caller) -> Regex | None:
    """A user's devices and the quotes as one regex (None for an admin or the reader:
    everything)."""
    if who.is_admin or _is_reader(who):
        return None
    mine = owned_devices(who.user)
    names = "|".join(re.escape(d) for d in sorted(mine))
    return Regex(rf"^(?:quote\..+{'|' + names if names else ''})$")


# -- statements ----------------------------------------------------------------------------
def _database(name: str | None) -> None:
    ours = resources().config.storage.database
    if name is not None and name != ours:
        raise StatementError(f"database not found: {name} (this cluster has one, {ours!r})")


def _union(answers: Iterable[list[dict[str, Any]]], index: int) -> list[dict[str, Any]]:
    """The series of statement ``index`` over several servers' answers, rows united."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for results in answers:
        if index >= len(results):
            continue
        result = results[index]
        if "error" in result:
            if str(result["error"]).startswith("database not found"):
                continue
            raise StatementError(str(result["error"]))
        for s in result["series"]:
            key = (str(s.get("name", "")), json.dumps(s.get("tags") or {}, sort_keys=True))
            into = merged.setdefault(key, {**s, "values": []})
            into["values"].extend(v for v in s.get("values") or [] if v not in into["values"])
    out = []
    for key in sorted(merged):
        s = merged[key]
        s["values"].sort(key=lambda row: [str(c) for c in row])
        out.append(s)
    return out


def _cut(series: list[dict[str, Any]], limit: int | None, offset: int | None) -> None:
    start = offset or 0
    for s in series:
        s["values"] = s["values"][start : None if limit is None else start + limit]


def _show(st: Show, who: Caller) -> list[dict[str, Any]]:
    _database(st.database)
    if st.kind == "databases":
        return [
            {
                "name": "databases",
                "columns": ["name"],
                "values": [[resources().config.storage.database]],
            }
        ]
    cluster = resources().storage
    if st.kind == "retention policies":
        answers, _ = cluster.ask_servers(render(replace(st, database=cluster.database)))
        for results in answers.values():
            return _union([results], 0)
        raise StatementError("no storage server answered")
    visible = _visible_regex(who)
    asked = replace(st, database=None, offset=None,
                    limit=None if st.limit is None else st.limit + (st.offset or 0))  # fmt: skip
    if visible is not None:
        if st.kind == "field keys":
            shown = _show(Show("measurements"), who)
            names = {str(v[0]) for s in shown for v in s["values"]}
            wanted = set(_measurements(st.sources, names))
            asked = replace(asked, sources=tuple(Measurement(n) for n in sorted(wanted)))
            if not wanted:
                return []
        else:
            asked = replace(
                asked, where=and_where(st.where, Binary("=~", Ident("device"), visible))
            )
    answers, _ = cluster.ask_servers(render(asked))
    series = _union(answers.values(), 0)
    _cut(series, st.limit, st.offset)
    return series


def _measurements(sources: Iterable[Measurement | Regex], known: set[str]) -> list[str]:
    out: list[str] = []
    for s in sources:
        if isinstance(s, Regex):
            try:
                pattern = re.compile(s.pattern)
            except re.error as exc:
                raise StatementError(f"invalid regular expression /{s.pattern}/: {exc}") from None
            out += [m for m in sorted(known) if pattern.search(m)]
        else:
            _database(s.database)
            out.append(s.name)
    return list(dict.fromkeys(out))


def _catalogue(measurements: list[str]) -> dict[str, set[str]]:
    """``{measurement: its devices}`` over every server that is up."""
    if not measurements:
        return {}
    q = render(Show("tag values", sources=tuple(Measurement(m) for m in measurements),
                    key_op="=", keys=("device",)))  # fmt: skip
    answers, _ = resources().storage.ask_servers(q)
    found: dict[str, set[str]] = {m: set() for m in measurements}
    for s in _union(answers.values(), 0):
        found.setdefault(str(s.get("name")), set()).update(str(v[1]) for v in s["values"])
    return found


def _select(st: Select, who: Caller) -> list[dict[str, Any]]:
    cluster = resources().storage
    known: set[str] = set()
    if any(isinstance(s, Regex) for s in st.sources):
        known = {str(v[0]) for s in _show(Show("measurements"), who) for v in s["values"]}
    measurements = _measurements(st.sources, known)
    wanted = named_values(st.where, "device")
    got: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for metric, devices in _catalogue(measurements).items():
        for device in sorted(devices):
            if not is_name(device) or not (_is_reader(who) or may_see(device)):
                continue
            if wanted is not None and device not in wanted:
                continue
            condition: Any = tag_equals("device", device)
            cut = cluster.cutoff_ns(device, metric)
            if cut is not None:
                condition = Binary("and", condition, Binary(">=", Ident("time"), Num(str(cut))))
            one = narrowed(st, Measurement(metric), condition)
            counting = Select(
                (Field(Call("count", (Ident("value"),))),), (Measurement(metric),),
                where=one.where,
            )  # fmt: skip
            try:
                answers = cluster.ask_series(device, metric, f"{render(one)}; {render(counting)}")
            except StorageError as exc:
                raise StatementError(f"series {series_key(device, metric)}: {exc}") from None
            best = _fullest(answers)
            if best is None:
                continue
            for s in best:
                key = (str(s.get("name")), json.dumps(s.get("tags") or {}, sort_keys=True))
                got.setdefault(key, []).append((device, s))
    out = []
    for key in sorted(got):
        parts = got[key]
        if len(parts) == 1:
            out.append(parts[0][1])
            continue
        if not st.keeps_raw_rows():
            several = ", ".join(d for d, _ in parts[:5])
            raise StatementError(
                f"the statement aggregates over the series of several devices ({several}): "
                "a series lives whole on its replicas, not across them; add GROUP BY device, "
                "or WHERE device = '...'"
            )
        out.append(_merge_rows([s for _, s in parts], descending=st.descending))
    if st.limit is not None or st.offset is not None:
        _cut(out, st.limit, st.offset)
    start = st.soffset or 0
    return out[start : None if st.slimit is None else start + st.slimit]


def _fullest(answers: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    """The series of the replica whose count of matching points is largest."""
    best: tuple[int, list[dict[str, Any]]] | None = None
    for results in answers.values():
        if len(results) < 2:
            continue
        first, count = results[0], results[1]
        if "error" in first:
            if str(first["error"]).startswith("database not found"):
                continue
            raise StatementError(str(first["error"]))
        n = 0
        for s in count.get("series") or []:
            for row in s.get("values") or []:
                n += int(row[1]) if len(row) > 1 and isinstance(row[1], int) else 0
        if best is None or n > best[0]:
            best = (n, first["series"])
    return None if best is None else best[1]


def _merge_rows(parts: list[dict[str, Any]], *, descending: bool) -> dict[str, Any]:
    columns = ["time", *sorted({c for p in parts for c in p["columns"] if c != "time"})]
    rows = []
    for p in parts:
        index = {c: i for i, c in enumerate(p["columns"])}
        rows += [[row[index[c]] if c in index else None for c in columns] for row in p["values"]]
    rows.sort(key=lambda r: r[0] if isinstance(r[0], int) else 0, reverse=descending)
    return {**parts[0], "columns": columns, "values": rows}


def _times(series: list[dict[str, Any]], epoch: str | None) -> None:
    """Times (ns from the servers) in the client's ``epoch``, or RFC 3339 without one."""
    for s in series:
        if not s.get("columns") or s["columns"][0] != "time":
            continue
        for row in s["values"]:
            ns = row[0]
            if not isinstance(ns, int):
                continue
            if epoch is not None:
                row[0] = ns // EPOCHS[epoch]
            else:
                secs, frac = divmod(ns, 10**9)
                text = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                row[0] = text + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def _run(st: Statement, who: Caller) -> dict[str, Any]:
    if isinstance(st, CreateDatabase):
        _database(st.name)
        return {}
    series = _show(st, who) if isinstance(st, Show) else _select(st, who)
    return {"series": series} if series else {}


# -- the app ------------------------------------------------------------------------------
def create_influx_app(res: ApiResources, api_config: dict[str, Any]) -> Flask:
    """The endpoint's WSGI app, sharing the API's resources, database and admin digest."""
    app = Flask("vigil-influx")
    app.config.from_mapping(
        DATABASE=api_config["DATABASE"],
        ADMIN_TOKEN_SHA256=api_config.get("ADMIN_TOKEN_SHA256"),
        READER_TOKEN_SHA256=api_config.get("READER_TOKEN_SHA256"),
        MAX_CONTENT_LENGTH=MAX_WRITE_BYTES,
    )
    app.teardown_appcontext(db.close_store)
    app.extensions["vigil"] = res

    @app.errorhandler(InfluxError)
    def _influx_error(exc: InfluxError) -> Response:
        resp = _json({"error": exc.message}, exc.status)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = 'Basic realm="InfluxDB"'
        return resp

    @app.after_request
    def _version(resp: Response) -> Response:
        resp.headers["X-Influxdb-Version"] = VERSION
        resp.headers["X-Influxdb-Build"] = "Vigil"
        return resp

    @app.route("/ping", methods=["GET", "HEAD"])
    def ping() -> Response:
        if request.args.get("verbose") == "true":
            return _json({"version": VERSION})
        return Response(status=204)

    @app.route("/query", methods=["GET", "POST"])
    def query() -> Response:
        who = _authenticate()
        epoch = request.values.get("epoch") or None
        if epoch is not None and epoch not in EPOCHS:
            raise InfluxError(400, f"invalid epoch {epoch!r}: one of {', '.join(EPOCHS)}")
        try:
            statements = parse_query(request.values.get("q", ""))
        except InfluxQLError as exc:
            raise InfluxError(400, str(exc)) from None
        g.caller = who
        results = []
        for i, st in enumerate(statements):
            try:
                if isinstance(st, Select):
                    _database(request.values.get("db") or None)
                result = _run(st, who)
                _times(result.get("series", []), epoch)
                results.append({"statement_id": i, **result})
            except StatementError as exc:
                results.append({"statement_id": i, "error": str(exc)})
        return _json({"results": results})

    @app.post("/write")
    def write() -> Response:
        from api.ingest import writable_readings  # noqa: PLC0415 - shared with POST /ingest

        who = _authenticate()
        if _is_reader(who):
            raise InfluxError(403, "the reader token reads and never writes")
        g.caller = who
        try:
            _database(request.args.get("db") or None)
        except StatementError as exc:
            raise InfluxError(404, str(exc)) from None
        precision = request.args.get("precision", "ns")
        if precision not in EPOCHS:
            raise InfluxError(400, f"invalid precision {precision!r}")
        body = request.get_data(cache=False)
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError) as exc:
                raise InfluxError(400, f"the gzip body does not decompress: {exc}") from None
            if len(body) > MAX_WRITE_BYTES:
                raise InfluxError(413, f"the body is over {MAX_WRITE_BYTES} bytes")
        status, message = writable_readings(body, EPOCHS[precision])
        if status != 204:
            raise InfluxError(status, message)
        return Response(status=204)

    return app


__all__ = ["create_influx_app"]
