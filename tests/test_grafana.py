"""The Grafana dashboards docker-compose provisions (deploy/grafana/): well formed, and every
query in them works against the real thing.

- Every dashboard JSON parses, has a stable unique uid, names only provisioned datasources
  (by uid, of the right type), and every panel that shows data has targets.
- Every InfluxQL query, with its variables and Grafana 11's macros expanded as Grafana does
  it (``$timeFilter`` as the backend renders it, ``time >= <ms>ms and time <= <ms>ms``, and
  the older ``now() - 1h`` form; ``$__interval``; a single value, and a multi-value variable
  as the regex ``(a|b)``), parses with :func:`api.influxql.parse_query` and runs, as
  Grafana's backend sends it, against the cluster endpoint of a real ``python -m api`` on
  three real InfluxDB servers, without an error and with data. The data: readings of a real
  edge agent through a real ingest, and sensor readings, share prices and a rollup written
  to the cluster. The variables' own queries run first and give the values.
- Every Prometheus expression passes ``promtool check rules``; every metric it names is
  exported by the real services (scraped from ingest, the alert engine, the notifier, the
  API and an agent), is a target's ``up``, Prometheus' ``ALERTS`` or a recording rule of
  deploy/prometheus/rules.yml (whose expression is checked the same way); its label names
  and ``=`` values are ones those metrics carry.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import wait_ready, wait_until, write_agent_config

from api.influxql import InfluxQLError, parse_query
from stack.process import free_port
from vigil.messages import Reading

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "vigil.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "vigil.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus"

EXPECTED_UIDS = {"vigil-devices", "vigil-device", "vigil-quotes", "vigil-pipeline",
                 "vigil-storage"}  # fmt: skip
#: panels that show no query result
NO_DATA_PANELS = {"row", "text", "dashlist", "news"}
#: Grafana's own variables a query or title may use
BUILTINS = {"timeFilter", "interval", "__interval", "__interval_ms", "__rate_interval",
            "__range", "__range_s", "__range_ms", "__from", "__to", "__dashboard",
            "__url_time_range", "__field", "__series", "__value", "__data"}  # fmt: skip

#: the agent the test runs (a quote agent of the test configuration) and what it is written
AGENT = "dev-8"
SENSOR_DEVICES = ("dev-3", "dev-4")
SYMBOLS = {"AAPL": "dev-8", "MSFT": "dev-9"}  # symbol -> the quote agent that fetched it


# -- the dashboards --------------------------------------------------------------------------
def load_dashboards() -> dict[str, dict[str, Any]]:
    boards = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(board, dict), f"{path.name}: not a JSON object"
        boards[path.name] = board
    return boards


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    for p in board.get("panels", []):
        yield p
        yield from p.get("panels", [])


def provisioned_datasources() -> dict[str, str]:
    """``{uid: type}`` of the provisioned datasources."""
    doc = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    return {d["uid"]: d["type"] for d in doc["datasources"]}


@dataclass(frozen=True)
class Query:
    where: str  # "file: panel title [refId]" or "file: variable name"
    datasource: str  # "influxdb" or "prometheus"
    text: str
    legend: str = ""


def queries(boards: Mapping[str, Mapping[str, Any]]) -> list[Query]:
    types = provisioned_datasources()
    out = []
    for name, board in boards.items():
        for p in panels(board):
            for t in p.get("targets", []):
                kind = types[t["datasource"]["uid"]]
                text = t.get("query") if kind == "influxdb" else t.get("expr")
                where = f"{name}: {p['title']!r} [{t['refId']}]"
                out.append(Query(where, kind, str(text), str(t.get("legendFormat", ""))))
    return out


def variables(board: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(board.get("templating", {}).get("list", []))


def variable_query(var: Mapping[str, Any]) -> str:
    q = var.get("query", "")
    return str(q.get("query", "") if isinstance(q, dict) else q)


_REFERENCE = re.compile(r"\$(\w+)|\$\{(\w+)(?:[.:][^}]*)?\}|\[\[(\w+)\]\]")


def references(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _REFERENCE.finditer(text)}


def test_dashboards_are_well_formed() -> None:
    boards = load_dashboards()
    types = provisioned_datasources()
    uids = [str(b.get("uid")) for b in boards.values()]
    assert sorted(uids) == sorted(EXPECTED_UIDS), f"dashboard uids {uids}"
    titles = [b.get("title") for b in boards.values()]
    assert len(set(titles)) == len(titles), f"two dashboards share a title: {titles}"
    problems = []
    for name, board in boards.items():
        if not re.fullmatch(r"[a-z0-9-]{1,40}", str(board.get("uid"))):
            problems.append(f"{name}: uid {board.get('uid')!r} is not a stable slug")
        if board.get("schemaVersion") != 39:
            problems.append(
                f"{name}: schemaVersion {board.get('schemaVersion')} (Grafana 11.1: 39)"
            )
        if board.get("id") is not None:
            problems.append(f"{name}: has a database id (provisioning assigns it)")
        defined = {v["name"] for v in variables(board)}
        ids = [p.get("id") for p in panels(board)]
        if len(set(ids)) != len(ids) or None in ids:
            problems.append(f"{name}: panel ids not unique: {ids}")
        for var in variables(board):
            if var["type"] == "query":
                uid = var.get("datasource", {}).get("uid")
                if uid not in types:
                    problems.append(f"{name}: variable {var['name']}: datasource {uid!r}")
                if not variable_query(var):
                    problems.append(f"{name}: variable {var['name']}: no query")
            if var["type"] in ("query", "custom") and var["name"] in references(
                variable_query(var)
            ):
                problems.append(f"{name}: variable {var['name']} refers to itself")
        for p in panels(board):
            where = f"{name}: panel {p.get('title')!r}"
            pos = p.get("gridPos", {})
            if not (pos.get("w", 0) > 0 and pos.get("x", 0) + pos.get("w", 0) <= 24):
                problems.append(f"{where}: gridPos {pos}")
            repeat = p.get("repeat")
            if repeat and not any(v["name"] == repeat and v.get("multi") for v in variables(board)):
                problems.append(f"{where}: repeats over {repeat!r}, not a multi-value variable")
            for ref in references(p.get("title", "")) - defined - BUILTINS:
                problems.append(f"{where}: title uses ${ref}, which is not defined")
            if p["type"] in NO_DATA_PANELS:
                continue
            targets = p.get("targets") or []
            if not targets:
                problems.append(f"{where}: no targets")
            panel_uid = p.get("datasource", {}).get("uid")
            if panel_uid not in types:
                problems.append(f"{where}: datasource {panel_uid!r} is not provisioned")
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs) or None in refs:
                problems.append(f"{where}: refIds {refs}")
            for t in targets:
                uid = t.get("datasource", {}).get("uid")
                kind = types.get(uid)
                if kind is None or t["datasource"].get("type") != kind:
                    problems.append(f"{where} [{t.get('refId')}]: datasource {t.get('datasource')}")
                    continue
                if kind == "influxdb" and not (t.get("rawQuery") and t.get("query")):
                    problems.append(f"{where} [{t['refId']}]: not a raw InfluxQL query")
                if kind == "prometheus" and not t.get("expr"):
                    problems.append(f"{where} [{t['refId']}]: no expr")
                text = str(t.get("query") or t.get("expr") or "")
                for ref in references(text) - defined - BUILTINS:
                    problems.append(f"{where} [{t['refId']}]: ${ref} is not defined")
    providers = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    if [p["type"] for p in providers] != ["file"] or not providers[0]["options"].get("path"):
        problems.append(f"{PROVIDERS.name}: not one file provider with a path")
    assert not problems, "\n  ".join(["dashboards:", *problems])


# -- Grafana's expansion of a query ----------------------------------------------------------
#: what Grafana's escapeRegex escapes in a value put into a regex
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
#: the regex literals of an InfluxQL query (after =~ / !~, or a FROM source)
_REGEX_LITERAL = re.compile(r"(?:=~|!~|\bFROM|,)\s*(/(?:\\.|[^/\\\n])*/)", re.I)
#: the quoted strings of an InfluxQL or PromQL query
_STRING_LITERAL = re.compile(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"")


class ExpansionError(AssertionError):
    pass


def escape_regex(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _spans(pattern: re.Pattern[str], text: str, group: int = 0) -> list[tuple[int, int]]:
    return [m.span(group) for m in pattern.finditer(text)]


def expand_variables(text: str, values: Mapping[str, list[str]], *, promql: bool) -> str:
    """``text`` with the dashboard's variables replaced as Grafana's InfluxDB and Prometheus
    datasources format them: inside a regex (an InfluxQL ``/.../``, a PromQL ``=~"..."``)
    each value escaped and several as ``(a|b)``; elsewhere the value as it is (several
    values outside a regex would be ambiguous, and are an error here)."""
    regexes = (
        [
            (a, b)
            for a, b in _spans(_STRING_LITERAL, text)
            if text[:a].rstrip().endswith(("=~", "!~"))
        ]
        if promql
        else _spans(_REGEX_LITERAL, text, 1)
    )

    def one(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name in BUILTINS or name.startswith("__"):
            return m.group(0)
        if name not in values:
            raise ExpansionError(f"${name} is not a variable of the dashboard")
        got = values[name]
        if any(a <= m.start() < b for a, b in regexes):
            if promql and got == [".*"]:
                return ".*"  # the All value of a Prometheus variable (allValue)
            escaped = [escape_regex(v) for v in got]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        if len(got) != 1:
            raise ExpansionError(f"${name} with several values is used outside a regex")
        return got[0]

    return _REFERENCE.sub(one, text)


@dataclass(frozen=True)
class TimeRange:
    from_ms: int
    to_ms: int
    interval_ms: int = 10_000
    #: the older frontend form of $timeFilter (``time >= now() - 1h``) instead of epoch ms
    relative: bool = False

    @property
    def interval(self) -> str:
        """Grafana's FormatInterval of the interval (10000 ms -> ``10s``)."""
        ms = self.interval_ms
        for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if ms >= size and ms % size == 0:
                return f"{ms // size}{unit}"
        return f"{ms}ms"

    def time_filter(self) -> str:
        if self.relative:
            return f"time >= now() - {(self.to_ms - self.from_ms) // 60_000}m and time <= now()"
        return f"time >= {self.from_ms}ms and time <= {self.to_ms}ms"


def expand_influxql(text: str, values: Mapping[str, list[str]], tr: TimeRange) -> str:
    """As Grafana 11 builds a raw InfluxQL query: variables in the frontend, then the
    backend's macros in its order (pkg/tsdb/influxdb/models/query.go, Build)."""
    q = expand_variables(text, values, promql=False)
    q = q.replace("$timeFilter", tr.time_filter())
    q = q.replace("$interval", tr.interval)
    q = q.replace("$__interval_ms", str(tr.interval_ms))
    q = q.replace("$__interval", tr.interval)
    if references(q):
        raise ExpansionError(f"left unexpanded: {sorted(references(q))} in {q}")
    return q


#: Grafana's Prometheus macros for a 1 h range at a 15 s scrape interval
PROM_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
               "$__range_s": "3600", "$__range_ms": "3600000"}  # fmt: skip


def expand_promql(text: str, values: Mapping[str, list[str]]) -> str:
    q = expand_variables(text, values, promql=True)
    for macro in sorted(PROM_MACROS, key=len, reverse=True):
        q = q.replace(macro, PROM_MACROS[macro])
    if references(q):
        raise ExpansionError(f"left unexpanded: {sorted(references(q))} in {q}")
    return q


# -- PromQL: the metrics and labels an expression names ---------------------------------------
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_MATCHER = re.compile(
    r"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')\s*,?"
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"bool", "and", "or", "unless", "offset", "inf", "nan", "atan2"}
#: aggregation operators: ``sum by (x) (...)`` puts the clause before the parenthesis
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile", "limitk"}  # fmt: skip


@dataclass
class Selector:
    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)


def _skip_string(s: str, i: int) -> int:
    quote, i = s[i], i + 1
    while i < len(s) and s[i] != quote:
        i += 2 if s[i] == "\\" and quote != "`" else 1
    return i + 1


def _matchers(s: str, i: int) -> tuple[list[tuple[str, str, str]], int]:
    """The label matchers of the ``{...}`` at ``s[i]``, and the index after it."""
    out: list[tuple[str, str, str]] = []
    i += 1
    while True:
        while i < len(s) and s[i].isspace():
            i += 1
        if i < len(s) and s[i] == "}":
            return out, i + 1
        m = _MATCHER.match(s, i)
        if m is None:
            raise ValueError(f"unreadable label matcher at {s[i : i + 30]!r}")
        out.append((m.group(1), m.group(2), m.group(3)[1:-1]))
        i = m.end()


def promql_names(expr: str) -> tuple[list[Selector], set[str]]:
    """The selectors of a PromQL expression and the labels its by/without/on/ignoring/
    group_left/group_right clauses name (a reader, not a parser: promtool parses)."""
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "[":
            i = expr.index("]", i) + 1
        elif c == "{":
            bare, i = _matchers(expr, i)
            selectors.append(Selector("", bare))
        elif c.isdigit() or (c == "." and expr[i + 1 : i + 2].isdigit()):
            while i < n and (expr[i].isalnum() or expr[i] in "._"):
                i += 1
        elif m := _IDENT.match(expr, i):
            word, i = m.group(0), m.end()
            j = i
            while j < n and expr[j].isspace():
                j += 1
            if j < n and expr[j] == "(":
                if word.lower() in _GROUPING:
                    close = expr.index(")", j)
                    grouping |= {x.strip() for x in expr[j + 1 : close].split(",") if x.strip()}
                    i = close + 1
                continue  # a function or aggregation: its arguments come next
            if word.lower() in _KEYWORDS | _GROUPING | _AGGREGATIONS:
                continue
            matchers: list[tuple[str, str, str]] = []
            if j < n and expr[j] == "{":
                matchers, i = _matchers(expr, j)
            selectors.append(Selector(word, matchers))
        else:
            i += 1
    return selectors, grouping


@dataclass
class Exported:
    """What the services' /metrics pages hold: sample names, and per sample name the label
    names and values seen (absent for a family declared without samples yet)."""

    names: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def add_page(self, text: str) -> None:
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum",
                    "_count", "_created"), "summary": ("", "_sum", "_count", "_created"),
                    "gauge": ("",)}  # fmt: skip
        for family in text_string_to_metric_families(text):
            self.names.update(family.name + s for s in suffixes.get(family.type, ("",)))
            for s in family.samples:
                self.names.add(s.name)
                self.labels.setdefault(s.name, set()).update(s.labels)
                for k, v in s.labels.items():
                    self.values.setdefault((s.name, k), set()).add(v)


@dataclass
class PromContext:
    exported: Exported
    rules: dict[str, str]  # recording rule -> its expression
    target_labels: dict[str, set[str]]  # labels Prometheus adds when scraping -> values
    alert_labels: set[str]

    @classmethod
    def load(cls, exported: Exported) -> PromContext:
        rules_doc = yaml.safe_load((PROMETHEUS / "rules.yml").read_text(encoding="utf-8"))
        rules = [r for g in rules_doc["groups"] for r in g["rules"]]
        scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
        target: dict[str, set[str]] = {"job": set(), "instance": set()}
        for job in scrape["scrape_configs"]:
            target["job"].add(job["job_name"])
            for sc in job.get("static_configs", []):
                target["instance"].update(sc["targets"])
                for k, v in (sc.get("labels") or {}).items():
                    target.setdefault(k, set()).add(v)
        alert_labels = {"alertname", "alertstate"}
        for r in rules:
            if "alert" in r:
                alert_labels |= set(r.get("labels") or {}) | promql_names(r["expr"])[1]
        return cls(
            exported,
            {r["record"]: r["expr"] for r in rules if "record" in r},
            target,
            alert_labels | set(target),
        )

    def check(self, expr: str, legend: str = "", _seen: set[str] | None = None) -> list[str]:
        """What is wrong with the metrics and labels ``expr`` names (empty: nothing)."""
        seen = set() if _seen is None else _seen
        try:
            selectors, grouping = promql_names(expr)
        except ValueError as exc:
            return [str(exc)]
        problems: list[str] = []
        known = set(self.target_labels) | {"le"}
        complete = True
        for s in selectors:
            labels: set[str] | None
            if s.name in self.rules:
                if s.name not in seen:
                    seen.add(s.name)
                    problems += [f"recording rule {s.name}: {p}"
                                 for p in self.check(self.rules[s.name], "", seen)]  # fmt: skip
                labels = promql_names(self.rules[s.name])[1] | set(self.target_labels)
            elif s.name == "up":
                labels = set(self.target_labels)
            elif s.name == "ALERTS":
                labels = self.alert_labels
            elif s.name not in self.exported.names:
                problems.append(
                    f"{s.name or '{...}'}: no service exports it, and it is no recording rule"
                )
                continue
            else:
                labels = self.exported.labels.get(s.name)
            if labels is None:  # declared, no sample yet: its labels are unknown
                complete = False
                continue
            known |= labels
            for label, op, value in s.matchers:
                if label not in labels | set(self.target_labels):
                    problems.append(f"{s.name}: has no label {label!r} (has {sorted(labels)})")
                    continue
                seen_values = self.exported.values.get((s.name, label)) or self.target_labels.get(
                    label, set()
                )
                if op == "=" and seen_values and value not in seen_values:
                    problems.append(
                        f"{s.name}{{{label}={value!r}}}: no such value (seen {sorted(seen_values)})"
                    )
        if complete:
            named = grouping | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
            problems += [f"label {g!r} is on none of its metrics" for g in sorted(named - known)]
        return problems


def promtool_problems(exprs: Mapping[str, str], tmp_path: Path) -> list[str]:
    """``promtool check rules`` over the expressions (each a recording rule): its complaints,
    each with the ``where`` of the expression."""
    wheres = list(exprs)
    rules = [{"record": f"grafana:check:{i}", "expr": exprs[w]} for i, w in enumerate(wheres)]
    doc = {"groups": [{"name": "grafana", "rules": rules}]}
    path = tmp_path / "grafana-rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    if done.returncode == 0:
        return []
    text = done.stdout + done.stderr
    found = [f"{w}: {line.strip()}" for i, w in enumerate(wheres)
             for line in text.splitlines() if f"grafana:check:{i}\"" in line]  # fmt: skip
    return found or [text]


def test_the_checks_catch_broken_queries(tmp_path: Path) -> None:
    """The checkers below are not tautologies: each flags what would break a panel."""
    exported = Exported()
    exported.add_page(
        "# HELP vigil_messages_in_total Messages received\n"
        "# TYPE vigil_messages_in_total counter\n"
        'vigil_messages_in_total{service="ingest"} 3.0\n'
        "# HELP vigil_storage_hint_points Points queued\n"
        "# TYPE vigil_storage_hint_points gauge\n"
    )
    ctx = PromContext.load(exported)
    ok = 'sum by (service) (rate(vigil_messages_in_total{service="ingest"}[1m]))'
    assert ctx.check(ok, "{{service}}") == []
    assert ctx.check("sum(vigil_storage_hint_points)") == []  # declared, no sample yet
    assert "no service exports it" in ctx.check("rate(vigil_mesages_in_total[1m])")[0]
    assert "no such value" in ctx.check('vigil_messages_in_total{service="ingest_service"}')[0]
    assert "no label" in ctx.check('vigil_messages_in_total{server="influx-1"}')[0]
    assert "on none of its metrics" in ctx.check("sum by (node) (vigil_messages_in_total)")[0]
    assert "on none" in ctx.check("sum(vigil_messages_in_total)", "{{server}}")[0]
    assert ctx.check('up{job="vigil-services"}') == []
    assert "no such value" in ctx.check('up{job="vigil"}')[0]
    assert promtool_problems({"good": ok}, tmp_path) == []
    (bad,) = promtool_problems({"good": ok, "bad": "sum(rate(x[1m])"}, tmp_path)
    assert bad.startswith("bad: ")
    with pytest.raises(InfluxQLError):
        parse_query('SELECT mean("value") FROM "t" INTO "u"')
    tr = TimeRange(1_000, 2_000)
    assert expand_influxql(
        'SELECT 1 FROM /^$m2$/ WHERE "device" =~ /^$d$/ AND "unit" = \'$u\' AND $timeFilter '
        "GROUP BY time($__interval)",
        {"d": ["a.b", "c"], "m2": ["x"], "u": ["C"]},
        tr,
    ) == (
        'SELECT 1 FROM /^x$/ WHERE "device" =~ /^(a\\.b|c)$/ AND "unit" = \'C\' AND '
        "time >= 1000ms and time <= 2000ms GROUP BY time(10s)"
    )
    with pytest.raises(ExpansionError):
        expand_influxql("SELECT 1 FROM x WHERE d = '$nope'", {}, tr)
    with pytest.raises(ExpansionError):
        expand_influxql("SELECT 1 FROM x WHERE d = '$d'", {"d": ["a", "b"]}, tr)


# -- the live system ----------------------------------------------------------------------------
@dataclass
class Live:
    url: str  # the cluster endpoint
    auth: tuple[str, str]
    database: str
    metrics_ports: dict[str, int]

    def query(self, q: str) -> tuple[int, Any]:
        """``q`` as Grafana 11's backend sends it (GET, db, epoch=ms, basic auth)."""
        params = urllib.parse.urlencode({"db": self.database, "epoch": "ms", "q": q})
        req = urllib.request.Request(f"{self.url}/query?{params}")
        creds = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {creds}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def sensor_and_quote_readings(now_ms: int) -> list[Reading]:
    """Ten minutes of readings, one every 30 s: two sensor devices (temperature, humidity),
    two share prices from the test's quote agents (simulated), and a rollup of dev-3."""
    out = []
    for k in range(20):
        ts = now_ms - 600_000 + k * 30_000
        for n, device in enumerate(SENSOR_DEVICES):
            out.append(Reading(10_000 + 100 * n + k, device, ts, "sensor", "temperature",
                               20.0 + n + k / 10, "C"))  # fmt: skip
            out.append(Reading(20_000 + 100 * n + k, device, ts, "sensor", "humidity",
                               45.0 - n + k / 5, "%"))  # fmt: skip
        for n, (symbol, agent) in enumerate(SYMBOLS.items()):
            out.append(Reading(30_000 + 100 * n + k, agent, ts, "quote", "price",
                               100.0 * (n + 1) + k, "USD",
                               {"symbol": symbol, "source": "simulated"}))  # fmt: skip
    out.append(Reading(40_000, "dev-3", now_ms - 3_600_000, "rollup", "temperature.1h", 21.0,
                       "C", {"stat": "mean"}))  # fmt: skip
    return out


@pytest.fixture
def live(cloud_config: Any, cluster: Any, broker: Any, run_service: Any, tmp_path: Path) -> Live:
    """``python -m api`` (its cluster endpoint), ingest, the alert engine and the notifier as
    real processes, a real quote agent publishing through them, and readings written."""
    config = cloud_config.config
    path = str(cloud_config.path)
    consumers = [run_service(m, "--config", path)
                 for m in ("ingest_service", "alert_engine", "notifier")]  # fmt: skip
    api = run_service("api", "--config", path)
    assert cluster.write(sensor_and_quote_readings(int(time.time() * 1000))) == []
    for proc in consumers:
        wait_ready(proc)
    agent_port = free_port()
    # a quote agent without symbols of its own: the prices are the ones written above
    no_quotes = {"symbols": [], "interval_s": 3600, "source": "simulated", "market_hours": False}
    agent_config = write_agent_config(
        tmp_path, broker, AGENT, metrics_port=agent_port, interval_s=0.5, quotes=no_quotes
    )
    agent = run_service("edge_agent", "--config", str(agent_config))
    api.wait_port("127.0.0.1", config.api.influx_port, 30)
    agent.wait_port("127.0.0.1", agent_port, 30)
    got = Live(
        f"http://127.0.0.1:{config.api.influx_port}",
        ("reader", cloud_config.reader_token),  # what the datasource uses
        config.storage.database,
        {
            "ingest": config.ingest.metrics_port,
            "alert_engine": config.alert_engine.metrics_port,
            "notifier": config.notifier.metrics_port,
            "api": config.api.metrics_port,
            "edge_agent": agent_port,
        },
    )

    def agent_stored() -> bool:
        status, body = got.query(
            f'SELECT count("value") FROM "temperature" WHERE "device" = \'{AGENT}\''
        )
        return status == 200 and bool(body["results"][0].get("series"))

    wait_until(agent_stored, 30, 0.2, what=f"{AGENT}'s readings stored through ingest")
    return got


def _has_data(result: Mapping[str, Any]) -> bool:
    """A statement result with at least one row holding a value besides its time."""
    for s in result.get("series") or []:
        cols = s.get("columns") or []
        for row in s.get("values") or []:
            if any(v is not None for c, v in zip(cols, row, strict=False) if c != "time"):
                return True
    return False


def run_influxql(live: Live, q: str) -> tuple[str | None, dict[str, Any]]:
    """(what is wrong or None, the statement's result) for one expanded query."""
    try:
        parse_query(q)
    except InfluxQLError as exc:
        return f"does not parse: {exc}", {}
    status, body = live.query(q)
    if status != 200:
        return f"HTTP {status}: {body}", {}
    results = body.get("results") or []
    if len(results) != 1 or "error" in results[0]:
        return f"error: {results}", {}
    if not _has_data(results[0]):
        return "no data", results[0]
    return None, results[0]


def _values(result: Mapping[str, Any], show: str) -> list[str]:
    """A variable's values from its SHOW answer, as Grafana reads them."""
    column = 1 if show.lower().startswith("show tag values") else 0
    return sorted({str(row[column]) for s in result.get("series") or [] for row in s["values"]})


def resolve(board: Mapping[str, Any], live: Live, problems: list[str], name: str
            ) -> dict[str, list[str]]:  # fmt: skip
    """Every variable's values, each query variable asked of the endpoint as Grafana does
    (with the variables before it at their defaults: all values, or the first)."""
    values: dict[str, list[str]] = {}
    defaults: dict[str, list[str]] = {}
    for var in variables(board):
        if var["type"] == "custom":
            found = [o.strip() for o in variable_query(var).split(",")]
        elif var["datasource"]["type"] == "influxdb":
            q = expand_influxql(variable_query(var), defaults, TimeRange(0, 0))
            wrong, result = run_influxql(live, q)
            if wrong:
                problems.append(f"{name}: variable {var['name']}: {q}: {wrong}")
                found = ["?"]
            else:
                found = _values(result, q)
                if var.get("regex"):
                    found = [v for v in found if re.search(var["regex"].strip("/"), v)]
        else:
            continue  # a Prometheus variable: checked with the Prometheus queries
        values[var["name"]] = found
        defaults[var["name"]] = found if var.get("multi") else found[:1]
    return values


def scenarios(board: Mapping[str, Any], values: Mapping[str, list[str]]
              ) -> Iterator[dict[str, list[str]]]:  # fmt: skip
    """The variable choices every query runs with: each multi-value variable with all its
    values; each with its first value; and each other option of a custom variable."""
    kinds = {v["name"]: v for v in variables(board) if v["name"] in values}
    first = {n: vs[:1] for n, vs in values.items()}
    choices = [{n: (vs if kinds[n].get("multi") else vs[:1]) for n, vs in values.items()}, first]
    for n, var in kinds.items():
        if var["type"] == "custom":
            choices += [{**first, n: [v]} for v in values[n][1:]]
    unique = {json.dumps(c, sort_keys=True): c for c in choices}
    yield from unique.values()


@pytest.mark.integration
def test_every_influxql_query_runs_on_the_cluster_endpoint(live: Live) -> None:
    now = int(time.time() * 1000)
    ranges = [
        TimeRange(now - 3_600_000, now + 1000),
        TimeRange(now - 3_600_000, now, relative=True),
    ]
    problems: list[str] = []
    checked = 0
    # the datasource's "Save & test" (Grafana 11: SHOW measurements; before: SHOW TAG KEYS)
    for q in ("SHOW measurements", "SHOW TAG KEYS"):
        wrong, _ = run_influxql(live, q)
        if wrong:
            problems.append(f"health check {q}: {wrong}")
    boards = load_dashboards()
    resolved: dict[str, dict[str, list[str]]] = {}
    for name, board in boards.items():
        values = resolve(board, live, problems, name)
        resolved[name] = values
        for query in (q for q in queries({name: board}) if q.datasource == "influxdb"):
            for choice in scenarios(board, values):
                for tr in ranges:
                    text = expand_influxql(query.text, choice, tr)
                    wrong, _ = run_influxql(live, text)
                    checked += 1
                    if wrong:
                        problems.append(f"{query.where}: {text}\n      {wrong}")
    assert not problems, "\n  ".join(["InfluxQL queries that fail:", *dict.fromkeys(problems)])
    assert checked >= 40, f"only {checked} InfluxQL queries ran"
    # the variables list what was written, and only that kind of series
    sensors = {*SENSOR_DEVICES, AGENT}
    for name in ("vigil-devices.json", "vigil-device.json"):
        assert sensors <= set(resolved[name]["device"]), resolved[name]
        assert {"temperature", "humidity"} <= set(resolved[name]["metric"]), resolved[name]
        assert not {"price", "temperature.1h"} & set(resolved[name]["metric"]), resolved[name]
        assert not any(d.startswith("quote.") for d in resolved[name]["device"])
    assert set(SYMBOLS) <= set(resolved["vigil-quotes.json"]["symbol"])
    # what the gateway refuses is caught: an aggregate over several devices' series
    tr = ranges[0]
    wrong, _ = run_influxql(
        live,
        expand_influxql('SELECT mean("value") FROM "temperature" WHERE $timeFilter', {}, tr),
    )
    assert wrong is not None and "several devices" in wrong
    # the share prices come with their simulated label
    table = next(q for q in queries({"q": boards["vigil-quotes.json"]})
                 if "Latest price" in q.where)  # fmt: skip
    _, result = run_influxql(live, expand_influxql(table.text, {"symbol": list(SYMBOLS)}, tr))
    rows = {s["tags"]["symbol"]: (s["tags"]["source"], s["tags"]["agent"], s["values"][0][1])
            for s in result["series"]}  # fmt: skip
    assert rows == {"AAPL": ("simulated", "dev-8", 119.0), "MSFT": ("simulated", "dev-9", 219.0)}


def _scrape_all(ports: Mapping[str, int]) -> Exported:
    exported = Exported()
    for name, port in ports.items():

        def page(port: int = port) -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return str(r.read().decode())
            except OSError:
                return None

        exported.add_page(wait_until(page, 30, 0.2, what=f"{name}'s metrics"))
    return exported


@pytest.mark.integration
def test_every_prometheus_query_names_what_the_services_export(live: Live, tmp_path: Path) -> None:
    ctx = PromContext.load(_scrape_all(live.metrics_ports))
    # the services really exported their families (a scrape that found nothing would pass)
    expected = {"vigil_ready", "vigil_ingest_lag_seconds_bucket", "vigil_outbox_depth",
                "vigil_storage_server_up", "vigil_storage_repair_runs_total"}  # fmt: skip
    assert expected <= ctx.exported.names
    problems: list[str] = []
    exprs: dict[str, str] = {}
    boards = load_dashboards()
    for name, board in boards.items():
        for var in variables(board):
            if var["type"] != "query" or var.get("datasource", {}).get("type") != "prometheus":
                continue
            m = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", variable_query(var))
            if m is None:
                problems.append(f"{name}: variable {var['name']}: {variable_query(var)}")
                continue
            metric, label = m.group(1) or "up", m.group(2)
            problems += [f"{name}: variable {var['name']}: {p}"
                         for p in ctx.check(f"count by ({label}) ({metric})")]  # fmt: skip
        prom_vars = {
            v["name"]
            for v in variables(board)
            if v.get("datasource", {}).get("type") == "prometheus"
        }
        for q in (q for q in queries({name: board}) if q.datasource == "prometheus"):
            choices = ({v: [".*"] for v in prom_vars}, {v: ["demo-1:9111"] for v in prom_vars})
            for choice in {json.dumps(c, sort_keys=True): c for c in choices}.values():
                try:
                    text = expand_promql(q.text, choice)
                except ExpansionError as exc:
                    problems.append(f"{q.where}: {exc}")
                    continue
                exprs[f"{q.where} {choice}"] = text
                problems += [f"{q.where}: {p}" for p in ctx.check(text, q.legend)]
    problems += promtool_problems(exprs, tmp_path)
    assert len(exprs) >= 40, f"only {len(exprs)} Prometheus expressions"
    assert not problems, "\n  ".join(["Prometheus queries that fail:", *dict.fromkeys(problems)])
