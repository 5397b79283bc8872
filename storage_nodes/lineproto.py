"""Readings as InfluxDB line protocol (pure).

One measurement per metric; tags ``device`` (for a quote, its symbol's pseudo-device
``quote.AAPL``: quotes are stored once per symbol, with tag ``agent`` naming the agent that
fetched it), ``kind``, ``unit`` (when set) and the reading's
own tags; fields ``value`` (always a float) and ``id`` (integer). The timestamp, in
nanoseconds, is ``ts_ms * 10**6 + id % 10**6``: distinct readings of a series never share a
point even within one millisecond, and writing a reading again rewrites the same point, so a
redelivery can never store it twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

from vigil.messages import Reading

NS_PER_MS = 1_000_000


class LineProtocolError(ValueError):
    """A value that line protocol cannot carry as one line (a control character or, in a
    tag, a backslash); the contract refuses these, so this is a last line of defence."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check(s: str, where: str, *, backslash_ok: bool) -> str:
    if _CONTROL.search(s):
        raise LineProtocolError(f"{where} {s[:70]!r} holds a control character")
    if not backslash_ok and "\\" in s:
        raise LineProtocolError(f"{where} {s[:70]!r} holds a backslash")
    if not s:
        raise LineProtocolError(f"{where} is empty")
    return s


def _escape_measurement(s: str) -> str:
    _check(s, "measurement", backslash_ok=True)
    return s.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _escape_tag(s: str, where: str = "tag") -> str:
    # InfluxDB 1.x does not unescape backslashes in tags: the contract refuses them instead.
    _check(s, where, backslash_ok=False)
    return s.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def point_time_ns(reading: Reading) -> int:
    return reading.ts * NS_PER_MS + reading.id % NS_PER_MS


def reading_to_line(reading: Reading) -> str:
    """One line of line protocol; LineProtocolError if any part cannot be one line."""
    if not math.isfinite(reading.value):
        raise LineProtocolError(f"value {reading.value!r} is not finite")
    tags = {"device": reading.stored_device, "kind": reading.kind, **reading.tags}
    if tags["device"] != reading.device:  # a quote: which agent fetched it
        tags["agent"] = reading.device
    if reading.unit:
        tags["unit"] = reading.unit
    return _line(reading.metric, tags, float(reading.value), reading.id, point_time_ns(reading))


@lru_cache(maxsize=4096)
def _series_prefix(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """``measurement,tag=value,...`` of one series, tags in the order given. Cached: a
    series' readings share it, and escaping it is most of a line's cost (a part that cannot
    be in a line raises, and a raise is not cached)."""
    tag_str = ",".join(
        f"{_escape_tag(k, 'tag key')}={_escape_tag(v, f'tag {k[:64]!r}')}" for k, v in tags
    )
    return f"{_escape_measurement(measurement)},{tag_str}"


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    """An InfluxQL single-quoted string literal (for statements that bind no parameters)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _line(measurement: str, tags: Mapping[str, str], value: float, rid: int, time_ns: int) -> str:
    """One line from its parts, formatted as :func:`reading_to_line` formats a reading."""
    prefix = _series_prefix(measurement, tuple(sorted(tags.items())))
    return f"{prefix} value={value!r},id={rid}i {time_ns}"


#: the columns of a stored Vigil point that are fields (every other column is a tag)
FIELD_COLUMNS = frozenset({"value", "id"})
_INT64 = range(-(2**63), 2**63)


def row_to_line(measurement: str, columns: Sequence[str], row: Sequence[object]) -> str | None:
    """The line that stored one row of ``SELECT * FROM measurement`` (InfluxDB 1.x JSON,
    ``epoch=ns``): the same text :func:`reading_to_line` made for that reading.

    ``value`` (float; the server's JSON writes 1.0 as ``1``) and ``id`` (integer) are the
    fields, every other column but ``time`` is a tag; a null tag is one the point lacks. None
    for a row that is not a Vigil point: no integer ``time`` or ``id``, no finite number
    ``value``, no ``device``, a column that is neither a tag (a string) nor null (a field of
    someone else's), or a part no line can carry.
    """
    if len(columns) != len(row) or len(set(columns)) != len(columns):
        return None
    cells = dict(zip(columns, row, strict=True))
    time_ns, value, rid = cells.pop("time", None), cells.get("value"), cells.get("id")
    if isinstance(time_ns, bool) or not isinstance(time_ns, int):
        return None
    if isinstance(rid, bool) or not isinstance(rid, int) or rid not in _INT64:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    tags: dict[str, str] = {}
    for key, cell in cells.items():
        if key in FIELD_COLUMNS or cell is None or cell == "":
            continue
        if not isinstance(cell, str):
            return None
        tags[key] = cell
    if "device" not in tags:
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past the float range: not a Vigil value
        return None
    if not math.isfinite(number):
        return None
    try:
        return _line(measurement, tags, number, rid, time_ns)
    except LineProtocolError:
        return None


#: the text up to the first space (comma) no backslash escapes; a backslash escapes the
#: character after it, whatever it is
_TO_SPACE = re.compile(r"(?:\\.?|[^\\ ])*", re.DOTALL)
_TO_COMMA = re.compile(r"(?:\\.?|[^\\,])*", re.DOTALL)


def _prefix_end(pattern: re.Pattern[str], s: str) -> int:
    match = pattern.match(s)  # both patterns match the empty string: never None
    return match.end() if match else 0


def line_series_time(line: str) -> tuple[str, str, int] | None:
    """(measurement, device, time in ns) of a line :func:`reading_to_line` wrote, or None
    for a line that is not one: what hint replay needs to honour deletions and retention."""
    head, _, ts = line.rpartition(" ")
    if not head or not ts.isdigit():
        return None
    # The key ends at the first space not escaped by a backslash; tag values hold neither.
    key = head[: _prefix_end(_TO_SPACE, head)]
    j = _prefix_end(_TO_COMMA, key)
    measurement = key[:j].replace("\\ ", " ").replace("\\,", ",").replace("\\\\", "\\")
    for tag in key[j + 1 :].split(","):
        name, _, value = tag.partition("=")
        if name == "device":
            return measurement, value, int(ts)
    return None
