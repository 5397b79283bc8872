"""Readings as InfluxDB line protocol (pure).

One measurement per metric; tags ``device``, ``kind``, ``unit`` (when set) and the reading's
own tags; fields ``value`` (always a float) and ``id`` (integer). The timestamp, in
nanoseconds, is ``ts_ms * 10**6 + id % 10**6``: distinct readings of a series never share a
point even within one millisecond, and writing a reading again rewrites the same point, so a
redelivery can never store it twice.
"""

from __future__ import annotations

from vigil.messages import Reading

NS_PER_MS = 1_000_000


def _escape_measurement(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _escape_tag(s: str) -> str:
    # InfluxDB 1.x does not unescape backslashes in tags: the contract refuses them instead.
    return s.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def point_time_ns(reading: Reading) -> int:
    return reading.ts * NS_PER_MS + reading.id % NS_PER_MS


def reading_to_line(reading: Reading) -> str:
    tags = {"device": reading.device, "kind": reading.kind, **reading.tags}
    if reading.unit:
        tags["unit"] = reading.unit
    tag_str = ",".join(f"{_escape_tag(k)}={_escape_tag(v)}" for k, v in sorted(tags.items()))
    return (
        f"{_escape_measurement(reading.metric)},{tag_str} "
        f"value={float(reading.value)!r},id={reading.id}i {point_time_ns(reading)}"
    )


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
