"""Merging the answers of a series' replicas, and what read repair should write (pure).

Each replica answers the same query (``ORDER BY time``, ``LIMIT n``) with its own rows. The
merged answer is the union by point identity (time in ns and reading id), in the query's
order, cut to the limit. A replica lacks a point of the merged answer only if the point lies
in the part of the time range that replica's answer covers: all of it when the replica
returned fewer than ``limit`` rows, otherwise up to its last row. Those points are what read
repair writes to it; a point beyond a replica's cover may simply not have been asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Identity = tuple[int, int]  # (time in ns, reading id)


@dataclass(frozen=True, slots=True)
class Row:
    time_ns: int
    id: int
    value: float
    line: str | None  # the point as line protocol, to repair another replica with

    @property
    def identity(self) -> Identity:
        return (self.time_ns, self.id)


@dataclass(frozen=True, slots=True)
class Merged:
    rows: list[Row]
    missing: dict[str, list[Row]]  # per replica, rows of ``rows`` it lacks within its cover


def merge(answers: Mapping[str, Sequence[Row]], limit: int, newest_first: bool) -> Merged:
    union: dict[Identity, Row] = {}
    for rows in answers.values():
        for row in rows:
            union.setdefault(row.identity, row)
    ordered = sorted(union.values(), key=lambda r: r.identity, reverse=newest_first)[:limit]
    missing: dict[str, list[Row]] = {}
    for name, rows in answers.items():
        have = {r.identity for r in rows}
        if len(rows) < limit:
            covered = ordered
        elif newest_first:
            edge = min(r.identity for r in rows)
            covered = [r for r in ordered if r.identity >= edge]
        else:
            edge = max(r.identity for r in rows)
            covered = [r for r in ordered if r.identity <= edge]
        lacking = [r for r in covered if r.identity not in have]
        if lacking:
            missing[name] = lacking
    return Merged(ordered, missing)
