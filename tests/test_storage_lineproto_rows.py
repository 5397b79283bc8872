"""Rows of ``SELECT *`` back to line protocol (pure): the line rebuilt from a stored point is
the line its reading was written as. The same against a real server is in
test_storage_repair.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage_nodes.lineproto import (
    LineProtocolError,
    line_series_time,
    point_time_ns,
    reading_to_line,
    row_to_line,
)
from vigil.messages import KINDS, MAX_ID, MAX_TS_MS, MIN_TS_MS, RESERVED_TAGS, Reading
from vigil.names import NAME_PATTERN

# What line protocol carries: no control characters, no backslash in tags (the contract).
_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\")
tag_text = st.text(_chars, min_size=1, max_size=12)
tag_keys = tag_text.filter(lambda k: k not in RESERVED_TAGS)
measurements = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)

readings = st.builds(
    Reading,
    id=st.integers(1, MAX_ID),
    device=tag_text,
    ts=st.integers(MIN_TS_MS, MAX_TS_MS),
    kind=st.sampled_from(KINDS),
    metric=measurements,
    value=st.floats(allow_nan=False, allow_infinity=False),
    unit=st.one_of(st.just(""), tag_text),
    tags=st.dictionaries(tag_keys, tag_text, max_size=5),
)


def as_json(value: float) -> float | int:
    """A float as InfluxDB's JSON writes it and Python reads it back: integral values
    below 1e21 without a fraction (1.0 is ``1``); -0.0 as ``-0``, which the repair's
    reader keeps as -0.0."""
    if (
        value.is_integer()
        and abs(value) < 1e21
        and not (value == 0 and math.copysign(1, value) < 0)
    ):
        return int(value)
    return value


def stored_row(
    r: Reading, other_tags: frozenset[str] = frozenset()
) -> tuple[list[str], list[object]]:
    """The row ``SELECT * FROM <metric>`` answers for ``r``, in a measurement whose other
    points also have the tags ``other_tags`` (null in this row)."""
    cells: dict[str, object] = {
        **dict.fromkeys(other_tags),
        **r.tags,
        "device": r.stored_device,
        **({"agent": r.device} if r.stored_device != r.device else {}),
        "kind": r.kind,
        "unit": r.unit or None,
        "id": r.id,
        "value": as_json(r.value),
    }
    columns = ["time", *sorted(cells)]
    return columns, [point_time_ns(r), *(cells[c] for c in columns[1:])]


@given(readings, st.frozensets(tag_keys, max_size=3))
def test_the_row_of_a_stored_reading_gives_back_its_line(r, other_tags):
    columns, row = stored_row(r, other_tags)
    assert row_to_line(r.metric, columns, row) == reading_to_line(r)


@given(readings, st.randoms(use_true_random=False))
def test_the_order_of_columns_does_not_matter(r, rnd):
    columns, row = stored_row(r)
    pairs = list(zip(columns, row, strict=True))
    rnd.shuffle(pairs)
    shuffled = [c for c, _ in pairs], [v for _, v in pairs]
    assert row_to_line(r.metric, *shuffled) == reading_to_line(r)


def test_a_float_written_as_an_integer_and_negative_zero_keep_their_text():
    r = Reading(7, "dev-1", MIN_TS_MS, "sensor", "t", 1e20, "", {})
    assert row_to_line("t", *stored_row(r)) == reading_to_line(r)
    assert "value=1e+20," in reading_to_line(r)
    z = Reading(7, "dev-1", MIN_TS_MS, "sensor", "t", -0.0, "", {})
    assert row_to_line("t", *stored_row(z)) == reading_to_line(z)
    assert "value=-0.0," in reading_to_line(z)


def test_an_empty_tag_is_a_tag_the_point_lacks():
    r = Reading(7, "dev-1", MIN_TS_MS, "sensor", "t", 1.5, "", {})
    columns, row = stored_row(r)
    row[columns.index("unit")] = ""
    assert row_to_line("t", columns, row) == reading_to_line(r)


BASE_COLUMNS = ["time", "device", "id", "kind", "value"]
BASE_ROW = [1_700_000_000_000_000_123, "dev-1", 123, "sensor", 2.5]


@pytest.mark.parametrize(
    ("column", "cell"),
    [
        ("time", None),
        ("time", 1.5),
        ("time", "2024-01-01T00:00:00Z"),
        ("id", None),
        ("id", 12.0),
        ("id", True),
        ("id", "12"),
        ("id", 2**63),
        ("value", None),
        ("value", "2.5"),
        ("value", True),
        ("value", math.inf),
        ("value", math.nan),
        ("value", 10**400),
        ("device", None),
        ("device", ""),
        ("device", 5),
        ("kind", 3.5),  # a field of someone else's
        ("kind", "a\\b"),  # a tag InfluxDB would not read back the same
        ("kind", "a\nb"),
    ],
)
def test_a_row_that_is_not_a_vigil_point_gives_none(column, cell):
    row = list(BASE_ROW)
    row[BASE_COLUMNS.index(column)] = cell
    assert row_to_line("t", BASE_COLUMNS, row) is None


def test_malformed_rows_give_none():
    assert row_to_line("t", BASE_COLUMNS, BASE_ROW) == (
        "t,device=dev-1,kind=sensor value=2.5,id=123i 1700000000000000123"
    )
    assert row_to_line("t", BASE_COLUMNS[:-1], BASE_ROW) is None  # lengths differ
    assert row_to_line("t", [*BASE_COLUMNS, "id"], [*BASE_ROW, 5]) is None  # repeated column
    assert row_to_line("t", BASE_COLUMNS[1:], BASE_ROW[1:]) is None  # no time
    assert row_to_line("t\n", BASE_COLUMNS, BASE_ROW) is None  # no measurement can hold it


names = st.from_regex(f"\\A{NAME_PATTERN}\\Z")


@given(readings, names, st.dictionaries(names.filter(lambda k: k not in RESERVED_TAGS), tag_text))
def test_a_hint_line_gives_back_its_series_and_time(r, device, tags):
    """What hint replay reads of a line to honour deletions and retention: devices and tag
    keys are names (the contract); measurements and tag values may need escaping."""
    r = dataclasses.replace(r, device=device, tags=tags)
    assert line_series_time(reading_to_line(r)) == (r.metric, r.stored_device, point_time_ns(r))


@given(st.text(max_size=80))
def test_any_text_gives_a_series_and_time_or_none(text):
    got = line_series_time(text)
    assert got is None or (isinstance(got[2], int) and got[2] >= 0)


def test_a_refused_series_stays_refused_and_a_good_one_keeps_its_text():
    """The escaped series prefix is cached: a refusal must not be, and a cached prefix
    must give the same line as the first."""
    bad = Reading(
        id=1, device="d", ts=MIN_TS_MS, kind="sensor", metric="t", value=1.0, tags={"room": "a\nb"}
    )
    for _ in range(2):
        with pytest.raises(LineProtocolError):
            reading_to_line(bad)
    good = Reading(
        id=2, device="d", ts=MIN_TS_MS, kind="sensor", metric="t x", value=1.0, tags={"room": "a b"}
    )
    first = reading_to_line(good)
    assert (
        reading_to_line(good)
        == first
        == (f"t\\ x,device=d,kind=sensor,room=a\\ b value=1.0,id=2i {point_time_ns(good)}")
    )
