"""The InfluxQL that the cluster endpoint accepts (issue 10.1), parsed and rendered (pure).

A hand-written recursive-descent parser of the subset Grafana, Chronograf and the ``influx``
CLI send: ``SELECT`` (fields, functions, math, ``WHERE`` on tags, fields and time, ``GROUP
BY time(...)``, tags, ``*``, ``fill``, ``ORDER BY time``, ``LIMIT``/``OFFSET``,
``SLIMIT``/``SOFFSET``, ``tz``), the ``SHOW`` statements those tools issue, and ``CREATE
DATABASE`` (Telegraf's ``outputs.influxdb`` sends it at start). Anything else is an
InfluxQLError that says what is not supported.

The endpoint never forwards the text it received: it renders the parsed statement again
(:func:`render`), every identifier double-quoted and every string and regex escaped, so
what reaches an InfluxDB server is exactly what was parsed, with the conditions the
endpoint adds (a device, a deletion cut-off). Total: any text gives statements or an
InfluxQLError, never another exception (tests/test_influxql.py fuzzes it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Union

MAX_QUERY_CHARS = 64 * 1024
MAX_DEPTH = 64

#: Per-point math: a statement using only these (and no GROUP BY time) keeps raw rows, so
#: rows of several devices can be merged by time.
MATH_FUNCTIONS = frozenset(
    [
        "abs",
        "acos",
        "asin",
        "atan",
        "atan2",
        "ceil",
        "cos",
        "exp",
        "floor",
        "ln",
        "log",
        "log2",
        "log10",
        "pow",
        "round",
        "sin",
        "sqrt",
        "tan",
    ]
)
AGGREGATES = frozenset(
    ["count", "distinct", "integral", "mean", "median", "mode", "spread", "stddev", "sum"]
)
SELECTORS = frozenset(["bottom", "first", "last", "max", "min", "percentile", "sample", "top"])
TRANSFORMATIONS = frozenset(
    [
        "cumulative_sum",
        "derivative",
        "difference",
        "elapsed",
        "moving_average",
        "non_negative_derivative",
        "non_negative_difference",
    ]
)
FUNCTIONS = MATH_FUNCTIONS | AGGREGATES | SELECTORS | TRANSFORMATIONS
CASTS = frozenset({"field", "tag", "integer", "float", "string", "boolean"})
FILLS = frozenset({"null", "none", "previous", "linear"})
DURATION_UNITS = ("ns", "ms", "us", "u", "µ", "s", "m", "h", "d", "w")
COMPARISONS = ("=~", "!~", "<=", ">=", "!=", "<>", "=", "<", ">")
SHOW_KINDS = ("databases", "retention policies", "measurements", "tag keys", "tag values",
              "field keys", "series")  # fmt: skip

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DURATION = re.compile(r"([0-9]+)(ns|ms|us|u|µ|s|m|h|d|w)(?![A-Za-z0-9_])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME = r"(?:[A-Za-z0-9_-]|\\\.)+"
#: Grafana's multi-value variable: ``^(a|b)$``, or one name ``^a$``.
_NAMED = re.compile(rf"\^(?:\(({_NAME}(?:\|{_NAME})*)\)|({_NAME}))\$")
_KEYWORDS = frozenset(
    [
        "all",
        "alter",
        "and",
        "as",
        "asc",
        "by",
        "create",
        "database",
        "databases",
        "delete",
        "desc",
        "drop",
        "field",
        "fill",
        "for",
        "from",
        "group",
        "grant",
        "in",
        "insert",
        "into",
        "key",
        "keys",
        "kill",
        "limit",
        "measurement",
        "measurements",
        "not",
        "offset",
        "on",
        "or",
        "order",
        "revoke",
        "select",
        "series",
        "show",
        "slimit",
        "soffset",
        "tag",
        "tags",
        "to",
        "values",
        "where",
        "with",
    ]
)


class InfluxQLError(ValueError):
    """What is wrong with a query, or what it asks that the endpoint does not support."""


# -- the syntax tree ---------------------------------------------------------------------
@dataclass(frozen=True)
class Ident:
    name: str
    cast: str | None = None


@dataclass(frozen=True)
class Str:
    value: str


@dataclass(frozen=True)
class Num:
    text: str


@dataclass(frozen=True)
class Duration:
    text: str


@dataclass(frozen=True)
class Regex:
    pattern: str


@dataclass(frozen=True)
class BoolLit:
    value: bool


@dataclass(frozen=True)
class Wildcard:
    pass


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Binary:
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Paren:
    expr: Expr


Expr = Union[Ident, Str, Num, Duration, Regex, BoolLit, Wildcard, Call, Binary, Paren]  # noqa: UP007


@dataclass(frozen=True)
class Field:
    expr: Expr
    alias: str | None = None


@dataclass(frozen=True)
class Measurement:
    name: str
    database: str | None = None
    policy: str | None = None


Source = Union[Measurement, Regex]  # noqa: UP007


@dataclass(frozen=True)
class Select:
    fields: tuple[Field, ...]
    sources: tuple[Source, ...]
    where: Expr | None = None
    group_by: tuple[Expr, ...] = ()
    fill: str | None = None
    descending: bool = False
    limit: int | None = None
    offset: int | None = None
    slimit: int | None = None
    soffset: int | None = None
    tz: str | None = None

    def functions(self) -> set[str]:
        found: set[str] = set()
        for f in self.fields:
            _calls(f.expr, found)
        return found

    def groups_by_time(self) -> bool:
        return any(isinstance(g, Call) and g.name == "time" for g in self.group_by)

    def keeps_raw_rows(self) -> bool:
        """Whether each row is one stored point (no aggregate, selector or transformation,
        no GROUP BY time): rows of several series can then be merged by time."""
        return not self.groups_by_time() and self.functions() <= MATH_FUNCTIONS

    def groups_by_tag(self, tag: str) -> bool:
        return any(
            isinstance(g, Wildcard) or (isinstance(g, Ident) and g.name == tag)
            for g in self.group_by
        )


@dataclass(frozen=True)
class Show:
    kind: str  # one of SHOW_KINDS
    database: str | None = None
    sources: tuple[Source, ...] = ()
    where: Expr | None = None
    #: SHOW TAG VALUES: the key clause (op, names or a regex); SHOW MEASUREMENTS: WITH
    #: MEASUREMENT (op, name or regex).
    key_op: str | None = None
    keys: tuple[str, ...] = ()
    key_regex: str | None = None
    limit: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class CreateDatabase:
    name: str


Statement = Union[Select, Show, CreateDatabase]  # noqa: UP007


def _calls(e: Expr, found: set[str]) -> None:
    if isinstance(e, Call):
        found.add(e.name)
        for a in e.args:
            _calls(a, found)
    elif isinstance(e, Binary):
        _calls(e.left, found)
        _calls(e.right, found)
    elif isinstance(e, Paren):
        _calls(e.expr, found)


# -- parsing -------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.depth = 0

    # lexing helpers
    def _skip(self) -> None:
        while self.i < len(self.s):
            if self.s[self.i] in " \t\r\n":
                self.i += 1
            elif self.s.startswith("--", self.i):
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end + 1
            else:
                return

    def error(self, what: str) -> InfluxQLError:
        near = self.s[self.i : self.i + 30]
        where = f"at {near!r}" if near else "at the end"
        return InfluxQLError(f"error parsing query: {what} {where} (char {self.i + 1})")

    def at_end(self) -> bool:
        self._skip()
        return self.i >= len(self.s)

    def peek_word(self) -> str | None:
        self._skip()
        m = _BARE.match(self.s, self.i)
        return m.group(0).lower() if m else None

    def word(self, *words: str) -> bool:
        """Consume the keyword sequence ``words`` if it is next (case-insensitive)."""
        start = self.i
        for w in words:
            if self.peek_word() != w:
                self.i = start
                return False
            self.i += len(w)
        return True

    def expect_word(self, *words: str) -> None:
        if not self.word(*words):
            raise self.error(f"expected {' '.join(words).upper()}")

    def sym(self, symbol: str) -> bool:
        self._skip()
        if self.s.startswith(symbol, self.i):
            self.i += len(symbol)
            return True
        return False

    def expect(self, symbol: str) -> None:
        if not self.sym(symbol):
            raise self.error(f"expected {symbol!r}")

    def _quoted(self, quote: str) -> str:
        """A quoted string or identifier from the opening ``quote``."""
        self.i += 1
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s):
                nxt = self.s[self.i + 1]
                out.append({"n": "\n", "t": "\t"}.get(nxt, nxt) if nxt in "nt\\\"'" else c + nxt)
                self.i += 2
                continue
            if c == quote:
                self.i += 1
                text = "".join(out)
                if _CONTROL.search(text):
                    raise self.error("a control character in a quoted text")
                return text
            out.append(c)
            self.i += 1
        raise self.error(f"unterminated {quote}")

    def ident(self) -> str:
        self._skip()
        if self.s.startswith('"', self.i):
            name = self._quoted('"')
            if not name:
                raise self.error("an empty identifier")
            return name
        m = _BARE.match(self.s, self.i)
        if m is None or m.group(0).lower() in _KEYWORDS:
            raise self.error("expected an identifier")
        self.i = m.end()
        return m.group(0)

    def regex(self) -> str:
        self._skip()
        if not self.s.startswith("/", self.i):
            raise self.error("expected a regular expression /.../")
        self.i += 1
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s):
                nxt = self.s[self.i + 1]
                out.append("/" if nxt == "/" else c + nxt)
                self.i += 2
                continue
            if c == "/":
                self.i += 1
                pattern = "".join(out)
                if _CONTROL.search(pattern):
                    raise self.error("a control character in a regular expression")
                return pattern
            out.append(c)
            self.i += 1
        raise self.error("unterminated regular expression")

    def integer(self) -> int:
        self._skip()
        m = re.compile(r"[0-9]{1,18}(?![0-9.])").match(self.s, self.i)
        if m is None:
            raise self.error("expected a whole number")
        self.i = m.end()
        return int(m.group(0))

    # statements
    def statements(self) -> list[Statement]:
        out: list[Statement] = []
        while True:
            while self.sym(";"):
                pass
            if self.at_end():
                break
            out.append(self.statement())
            if not self.at_end() and not self.sym(";"):
                raise self.error("expected ';' or the end of the query")
        if not out:
            raise InfluxQLError("the query holds no statement")
        return out

    def statement(self) -> Statement:
        word = self.peek_word()
        if word == "select":
            return self.select()
        if word == "show":
            return self.show()
        if self.word("create", "database"):
            return CreateDatabase(self.ident())
        raise self.error(
            "the Vigil cluster endpoint runs SELECT, SHOW (databases, retention policies, "
            "measurements, tag keys, tag values, field keys, series) and CREATE DATABASE; "
            "delete data with DELETE /storage/data or /storage/series on the API, not"
        )

    def select(self) -> Select:
        self.expect_word("select")
        fields = [self.field()]
        while self.sym(","):
            fields.append(self.field())
        if self.word("into"):
            raise self.error("SELECT ... INTO is not supported")
        self.expect_word("from")
        sources = self.sources()
        where = self.expr() if self.word("where") else None
        group_by: list[Expr] = []
        fill = None
        if self.word("group", "by"):
            group_by.append(self.group_item())
            while self.sym(","):
                group_by.append(self.group_item())
        if self.word("fill"):
            fill = self.fill()
        descending = False
        if self.word("order", "by"):
            if self.ident_is("time") is False:
                raise self.error("only ORDER BY time is supported")
            if self.word("desc"):
                descending = True
            else:
                self.word("asc")
        limits: dict[str, int | None] = dict.fromkeys(("limit", "offset", "slimit", "soffset"))
        for key in ("limit", "offset", "slimit", "soffset"):
            if self.word(key):
                limits[key] = self.integer()
        tz = None
        if self.word("tz"):
            self.expect("(")
            self._skip()
            if not self.s.startswith("'", self.i):
                raise self.error("tz() takes a quoted time zone name")
            tz = self._quoted("'")
            self.expect(")")
        return Select(
            tuple(fields), tuple(sources), where, tuple(group_by), fill, descending, **limits, tz=tz
        )

    def ident_is(self, name: str) -> bool:
        start = self.i
        try:
            if self.ident().lower() == name:
                return True
        except InfluxQLError:
            pass
        self.i = start
        return False

    def field(self) -> Field:
        expr = self.expr()
        alias = self.ident() if self.word("as") else None
        return Field(expr, alias)

    def sources(self) -> list[Source]:
        out = [self.source()]
        while self.sym(","):
            out.append(self.source())
        return out

    def source(self) -> Source:
        self._skip()
        if self.s.startswith("(", self.i):
            raise self.error("subqueries are not supported")
        if self.s.startswith("/", self.i):
            return Regex(self.regex())
        parts = [self.ident()]
        while len(parts) < 3 and self.sym("."):
            self._skip()
            parts.append(self.ident())
        if len(parts) == 1:
            return Measurement(parts[0])
        if len(parts) == 2:
            return Measurement(parts[1], policy=parts[0])
        return Measurement(parts[2], database=parts[0], policy=parts[1] or None)

    def group_item(self) -> Expr:
        self._skip()
        if self.sym("*"):
            return Wildcard()
        if self.s.startswith("/", self.i):
            return Regex(self.regex())
        if self.peek_word() == "time" and self.s[self.i + 4 : self.i + 5].strip() in ("(", ""):
            start = self.i
            self.i += 4
            if self.sym("("):
                args: list[Expr] = [self.duration()]
                if self.sym(","):
                    args.append(self.duration())
                self.expect(")")
                return Call("time", tuple(args))
            self.i = start
        return Ident(self.ident())

    def duration(self) -> Duration:
        self._skip()
        neg = self.sym("-")
        m = _DURATION.match(self.s, self.i)
        if m is None:
            raise self.error("expected a duration such as 10s or 1h")
        self.i = m.end()
        return Duration(("-" if neg else "") + m.group(0))

    def fill(self) -> str:
        self.expect("(")
        self._skip()
        word = self.peek_word()
        if word in FILLS:
            self.i += len(word)
            value = word
        else:
            neg = "-" if self.sym("-") else ""
            m = _NUMBER.match(self.s, self.i)
            if m is None:
                raise self.error("fill() takes null, none, previous, linear or a number")
            self.i = m.end()
            value = neg + m.group(0)
        self.expect(")")
        return value

    def show(self) -> Show:
        self.expect_word("show")
        kind = next((k for k in SHOW_KINDS if self.word(*k.split())), None)
        if kind is None:
            raise self.error(f"SHOW supports {', '.join(k.upper() for k in SHOW_KINDS)}")
        database = self.ident() if self.word("on") else None
        if kind in ("databases", "retention policies"):
            return Show(kind, database)
        sources: tuple[Source, ...] = ()
        key_op: str | None = None
        keys: tuple[str, ...] = ()
        key_regex: str | None = None
        if kind == "measurements":
            if self.word("with", "measurement"):
                key_op, keys, key_regex = self.key_clause(allow_in=False)
        else:
            if self.word("from"):
                sources = tuple(self.sources())
            if kind == "tag values":
                self.expect_word("with", "key")
                key_op, keys, key_regex = self.key_clause(allow_in=True)
        where = None
        if kind != "field keys" and self.word("where"):
            where = self.expr()
        limit = self.integer() if self.word("limit") else None
        offset = self.integer() if self.word("offset") else None
        return Show(kind, database, sources, where, key_op, keys, key_regex, limit, offset)

    def key_clause(self, *, allow_in: bool) -> tuple[str, tuple[str, ...], str | None]:
        if allow_in and self.word("in"):
            self.expect("(")
            keys = [self.ident()]
            while self.sym(","):
                keys.append(self.ident())
            self.expect(")")
            return "in", tuple(keys), None
        for op in ("=~", "!~", "!=", "<>", "="):
            if self.sym(op):
                if op in ("=~", "!~"):
                    return op, (), self.regex()
                return ("!=" if op == "<>" else op), (self.ident(),), None
        raise self.error("expected = name, =~ /regex/ or IN (names)")

    # expressions
    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error("the expression nests too deep")
        try:
            return self.binary(0)
        finally:
            self.depth -= 1

    _LEVELS = (("or",), ("and",), COMPARISONS, ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> Expr:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while True:
            op = self.operator(level)
            if op is None:
                return left
            if op in ("=~", "!~"):
                right: Expr = Regex(self.regex())
            else:
                right = self.binary(level + 1)
            left = Binary(op, left, right)
            if level == 2:  # a comparison does not chain
                return left

    def operator(self, level: int) -> str | None:
        ops = self._LEVELS[level]
        if level < 2:
            return ops[0] if self.word(ops[0]) else None
        self._skip()
        for op in ops:
            if self.s.startswith(op, self.i):
                self.i += len(op)
                return "!=" if op == "<>" else op
        return None

    def unary(self) -> Expr:
        self._skip()
        if self.sym("-"):
            self._skip()
            m = _DURATION.match(self.s, self.i) or _NUMBER.match(self.s, self.i)
            if m is None:
                raise self.error("expected a number after '-'")
            self.i = m.end()
            text = "-" + m.group(0)
            return Duration(text) if _DURATION.fullmatch(m.group(0)) else Num(text)
        return self.primary()

    def primary(self) -> Expr:
        self._skip()
        if self.i >= len(self.s):
            raise self.error("expected a value")
        c = self.s[self.i]
        if c == "(":
            self.i += 1
            inner = self.expr()
            self.expect(")")
            return Paren(inner)
        if c == "*":
            self.i += 1
            return Wildcard()
        if c == "'":
            return Str(self._quoted("'"))
        if c == "/":
            return Regex(self.regex())
        if c.isdigit():
            m = _DURATION.match(self.s, self.i)
            if m is not None:
                self.i = m.end()
                return Duration(m.group(0))
            m = _NUMBER.match(self.s, self.i)
            assert m is not None
            self.i = m.end()
            return Num(m.group(0))
        word = self.peek_word()
        if word in ("true", "false") and c != '"':
            self.i += len(word)
            return BoolLit(word == "true")
        quoted = c == '"'
        name = self.ident()
        if not quoted and self.sym("("):
            fn = name.lower()
            if fn != "now" and fn not in FUNCTIONS:
                raise self.error(f"function {name}() is not supported")
            args: list[Expr] = []
            if not self.sym(")"):
                args.append(self.expr())
                while self.sym(","):
                    args.append(self.expr())
                self.expect(")")
            return Call(fn, tuple(args))
        cast = None
        if self.sym("::"):
            cast = self.peek_word()
            if cast not in CASTS:
                raise self.error(f"a cast is one of {', '.join(sorted(CASTS))}")
            self.i += len(cast)
        return Ident(name, cast)


def parse_query(text: str) -> list[Statement]:
    """The statements of ``text``; InfluxQLError says what is wrong or not supported."""
    if not isinstance(text, str):
        raise InfluxQLError("the query must be text")
    if len(text) > MAX_QUERY_CHARS:
        raise InfluxQLError(f"the query is longer than {MAX_QUERY_CHARS} characters")
    try:
        return _Parser(text).statements()
    except RecursionError:
        raise InfluxQLError("error parsing query: the query nests too deep") from None


# -- rendering -----------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] != "/":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        out.append("\\/" if c == "/" else c)
        i += 1
    return "/" + "".join(out) + "/"


def render_expr(e: Expr) -> str:
    if isinstance(e, Ident):
        return quote_ident(e.name) + (f"::{e.cast}" if e.cast else "")
    if isinstance(e, Str):
        return quote_string(e.value)
    if isinstance(e, Num | Duration):
        return e.text
    if isinstance(e, Regex):
        return quote_regex(e.pattern)
    if isinstance(e, BoolLit):
        return "true" if e.value else "false"
    if isinstance(e, Wildcard):
        return "*"
    if isinstance(e, Call):
        return f"{e.name}({', '.join(render_expr(a) for a in e.args)})"
    if isinstance(e, Binary):
        op = e.op.upper() if e.op in ("or", "and") else e.op
        return f"{render_expr(e.left)} {op} {render_expr(e.right)}"
    return f"({render_expr(e.expr)})"


def _render_sources(sources: tuple[Source, ...]) -> str:
    out = []
    for s in sources:
        if isinstance(s, Regex):
            out.append(quote_regex(s.pattern))
        else:
            prefix = ""
            if s.database is not None:
                prefix = (
                    quote_ident(s.database)
                    + "."
                    + (quote_ident(s.policy) if s.policy else "")
                    + "."
                )
            elif s.policy is not None:
                prefix = quote_ident(s.policy) + "."
            out.append(prefix + quote_ident(s.name))
    return ", ".join(out)


def _limits(pairs: tuple[tuple[str, int | None], ...]) -> str:
    return "".join(f" {k} {v:d}" for k, v in pairs if v is not None)


def render(st: Statement) -> str:
    """The statement as InfluxQL text that parses back to ``st``."""
    if isinstance(st, CreateDatabase):
        return f"CREATE DATABASE {quote_ident(st.name)}"
    if isinstance(st, Show):
        text = f"SHOW {st.kind.upper()}"
        if st.database is not None:
            text += f" ON {quote_ident(st.database)}"
        if st.kind == "measurements" and st.key_op is not None:
            text += " WITH MEASUREMENT " + _key_clause(st)
        if st.sources:
            text += " FROM " + _render_sources(st.sources)
        if st.kind == "tag values":
            text += " WITH KEY " + _key_clause(st)
        if st.where is not None:
            text += " WHERE " + render_expr(st.where)
        return text + _limits((("LIMIT", st.limit), ("OFFSET", st.offset)))
    text = "SELECT " + ", ".join(
        render_expr(f.expr) + (f" AS {quote_ident(f.alias)}" if f.alias else "") for f in st.fields
    )
    text += " FROM " + _render_sources(st.sources)
    if st.where is not None:
        text += " WHERE " + render_expr(st.where)
    if st.group_by:
        text += " GROUP BY " + ", ".join(render_expr(g) for g in st.group_by)
    if st.fill is not None:
        text += f" fill({st.fill})"
    if st.descending:
        text += " ORDER BY time DESC"
    text += _limits(
        (("LIMIT", st.limit), ("OFFSET", st.offset), ("SLIMIT", st.slimit), ("SOFFSET", st.soffset))
    )
    if st.tz is not None:
        text += f" tz({quote_string(st.tz)})"
    return text


def _key_clause(st: Show) -> str:
    if st.key_op == "in":
        return "IN (" + ", ".join(quote_ident(k) for k in st.keys) + ")"
    if st.key_regex is not None:
        return f"{st.key_op} {quote_regex(st.key_regex)}"
    return f"{st.key_op} {quote_ident(st.keys[0])}"


# -- what the endpoint adds ------------------------------------------------------------------
def and_where(where: Expr | None, condition: Expr) -> Expr:
    """``where`` narrowed by ``condition`` (the original kept whole, in parentheses)."""
    return condition if where is None else Binary("and", Paren(where), condition)


def tag_equals(tag: str, value: str) -> Expr:
    return Binary("=", Ident(tag), Str(value))


def narrowed(st: Select, source: Measurement, condition: Expr) -> Select:
    """``st`` on one measurement with ``condition`` added to its WHERE; SLIMIT and
    SOFFSET left to the caller (they apply to the merged series), and so is OFFSET (each
    sub-query returns up to LIMIT + OFFSET rows)."""
    limit = None if st.limit is None else st.limit + (st.offset or 0)
    return replace(
        st,
        sources=(source,),
        where=and_where(st.where, condition),
        limit=limit,
        offset=None,
        slimit=None,
        soffset=None,
    )


def named_values(where: Expr | None, tag: str) -> set[str] | None:
    """The values of ``tag`` a WHERE allows, when a top-level conjunct names them (``tag =
    'x'``, or Grafana's ``tag =~ /^(a|b)$/``); None when it does not say (any value)."""
    if where is None:
        return None
    if isinstance(where, Paren):
        return named_values(where.expr, tag)
    if isinstance(where, Binary) and where.op == "and":
        left, right = named_values(where.left, tag), named_values(where.right, tag)
        if left is None:
            return right
        return left if right is None else left & right
    if isinstance(where, Binary) and isinstance(where.left, Ident) and where.left.name == tag:
        if where.op == "=" and isinstance(where.right, Str):
            return {where.right.value}
        if where.op == "=~" and isinstance(where.right, Regex):
            m = _NAMED.fullmatch(where.right.pattern)
            if m is not None:
                names = m.group(1) or m.group(2)
                return {v.replace("\\.", ".") for v in names.split("|")}
    return None
