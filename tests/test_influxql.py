"""The cluster endpoint's InfluxQL (api/influxql.py, pure): the statements Grafana,
Chronograf and the influx CLI send parse, render back to text that parses to the same
statement, and anything else is an InfluxQLError that says why (hypothesis: any text)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.influxql import (
    Binary,
    Ident,
    InfluxQLError,
    Measurement,
    Paren,
    Select,
    Show,
    Str,
    named_values,
    narrowed,
    parse_query,
    quote_regex,
    render,
    tag_equals,
)

#: What the tools send (Grafana's macros expanded).
CORPUS = [
    "SELECT last(value) FROM temperature GROUP BY device",
    'SELECT mean("value") FROM "temperature" WHERE ("device" =~ /^(demo-1|demo-2)$/) AND '
    'time >= 1765000000000ms and time <= 1765003600000ms GROUP BY time(10s), "device" fill(null)',
    "SELECT mean(value) FROM temperature WHERE time > now() - 1h GROUP BY time(1m) fill(none)",
    'SELECT "value" FROM "vigil"."autogen"."humidity" WHERE "device" = \'dev-1\' '
    "ORDER BY time DESC LIMIT 10",
    "SELECT max(value), min(value) AS lo, count(value) FROM price WHERE symbol = 'AAPL'",
    "SELECT non_negative_derivative(mean(value), 1s) FROM cpu GROUP BY time(30s), * fill(previous)",
    "SELECT percentile(value, 95) FROM t WHERE time >= '2025-12-06T00:00:00Z' GROUP BY device",
    "SELECT value * 2 + 1 FROM t WHERE value > -3.5 AND kind != 'rollup' LIMIT 5 OFFSET 2 "
    "SLIMIT 3 SOFFSET 1 tz('Europe/Rome')",
    "SELECT * FROM /temp.*/ WHERE device !~ /^quote\\./",
    "SELECT value::field FROM t GROUP BY time(1h, 15m), device fill(0)",
    "SHOW DATABASES",
    'SHOW RETENTION POLICIES ON "vigil"',
    "SHOW MEASUREMENTS LIMIT 1",
    "SHOW MEASUREMENTS WITH MEASUREMENT =~ /temp/ WHERE device = 'dev-1' LIMIT 100",
    'SHOW TAG KEYS FROM "temperature"',
    'SHOW TAG VALUES FROM "temperature" WITH KEY = "device"',
    'SHOW TAG VALUES WITH KEY IN ("device", "kind") WHERE device =~ /dev/',
    "SHOW FIELD KEYS FROM temperature",
    "SHOW SERIES FROM temperature WHERE device = 'dev-1' LIMIT 10",
    'CREATE DATABASE "vigil"',
    "SHOW DATABASES; SELECT count(value) FROM t;",
]


@pytest.mark.parametrize("query", CORPUS)
def test_the_tools_queries_parse_and_render_back_to_the_same_statements(query: str) -> None:
    statements = parse_query(query)
    again = [parse_query(render(s)) for s in statements]
    assert again == [[s] for s in statements]


def test_what_a_statement_says_is_read() -> None:
    (sel,) = parse_query(CORPUS[1])
    assert isinstance(sel, Select)
    assert sel.sources == (Measurement("temperature"),)
    assert sel.groups_by_time() and sel.groups_by_tag("device") and sel.fill == "null"
    assert not sel.keeps_raw_rows() and sel.functions() == {"mean"}
    assert named_values(sel.where, "device") == {"demo-1", "demo-2"}
    (raw,) = parse_query(CORPUS[3])
    assert isinstance(raw, Select) and raw.keeps_raw_rows() and raw.descending
    assert raw.sources == (Measurement("humidity", "vigil", "autogen"),) and raw.limit == 10
    assert named_values(raw.where, "device") == {"dev-1"}
    (tv,) = parse_query(CORPUS[16])
    assert isinstance(tv, Show) and tv.kind == "tag values" and tv.keys == ("device", "kind")


def test_named_values_never_narrows_what_a_regex_may_match_more_widely() -> None:
    for where, expected in [
        ("device =~ /^a|b$/", None),  # "starts with a or ends with b": not two names
        ("device =~ /^dev-1$/", {"dev-1"}),
        ("device =~ /dev-1/", None),
        ("device = 'x' OR device = 'y'", None),
        ("device = 'x' AND time > now() - 1h", {"x"}),
        ("kind = 'x'", None),
    ]:
        (sel,) = parse_query(f"SELECT value FROM t WHERE {where}")
        assert isinstance(sel, Select)
        assert named_values(sel.where, "device") == expected, where


def test_narrowing_keeps_the_original_condition_whole() -> None:
    (sel,) = parse_query("SELECT value FROM a, b WHERE x = 1 OR y = 2 LIMIT 3 OFFSET 2 SLIMIT 1")
    assert isinstance(sel, Select)
    one = narrowed(sel, Measurement("a"), tag_equals("device", "d'1"))
    assert one.where == Binary("and", Paren(sel.where), Binary("=", Ident("device"), Str("d'1")))
    assert (one.limit, one.offset, one.slimit) == (5, None, None)
    text = render(one)
    assert text.startswith('SELECT "value" FROM "a" WHERE (')
    assert "'d\\'1'" in text and parse_query(text) == [one]


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("DROP MEASUREMENT temperature", "DELETE /storage"),
        ("DELETE FROM temperature", "runs SELECT"),
        ("SELECT value INTO other FROM t", "INTO is not supported"),
        ("SELECT value FROM (SELECT value FROM t)", "subqueries"),
        ("SELECT evil(value) FROM t", "evil() is not supported"),
        ("SELECT value FROM t WHERE device = 'x", "unterminated"),
        ("SELECT value FROM t ORDER BY value", "ORDER BY time"),
        ("SHOW USERS", "SHOW supports"),
        ("", "no statement"),
        ("SELECT value FROM t WHERE " + "(" * 200 + "1" + ")" * 200, "too deep"),
        ("SELECT value FROM t WHERE device = 'a\nb'", "control character"),
    ],
)
def test_what_is_not_supported_is_a_clear_error(query: str, says: str) -> None:
    with pytest.raises(InfluxQLError, match=None) as info:
        parse_query(query)
    assert says in str(info.value)


def test_regexes_keep_their_escapes() -> None:
    for pattern in ["^quote\\.", "a/b", "\\d+", "x\\\\"]:
        (sel,) = parse_query(f"SELECT value FROM t WHERE device =~ {quote_regex(pattern)}")
        assert isinstance(sel, Select) and isinstance(sel.where, Binary)
        assert sel.where.right.pattern == pattern  # type: ignore[union-attr]


_PIECES = st.sampled_from(
    [*CORPUS, "SELECT", "FROM", "WHERE", "GROUP BY", "(", ")", "'", '"', "/", "\\", ",", ";",
     "=~", "::", "time(", "fill(", "-", "1h", "now()", " ", "\x00", "é",
     "LIMIT 99999999999999999999"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=12).map("".join)))
def test_any_text_gives_statements_or_an_influxql_error(text: str) -> None:
    try:
        statements = parse_query(text)
    except InfluxQLError:
        return
    for s in statements:  # and what parses renders to text that parses to it
        assert parse_query(render(s)) == [s]
