"""Loss made visible: which of a device's readings are neither stored nor explained. Pure.

An agent's readings have consecutive ids from its outbox's ``first_id``. Its status says
``settled_below``: every id below it has left the outbox, confirmed stored or dropped (and
the drops are on the status as ``dropped_ids``). So every id in
``[first_id, settled_below)`` must be stored, unless it was dropped. One that is neither is
an unexplained gap: storage lost it after confirming it, or a confirmation came for a
reading that was never stored.

Ingest members on a shared subscription each see only part of a device's stream, so this
check runs apart from them, on what storage holds (the API runs it; :mod:`api.gapcheck`).
"""

from __future__ import annotations

from collections.abc import Iterable

from vigil.messages import id_ranges, id_ranges_of

Range = tuple[int, int]  # inclusive


def subtract(ranges: Iterable[Range], minus: Iterable[Range]) -> list[Range]:
    """``ranges`` without the ids of ``minus`` (both inclusive ranges), merged and sorted.
    One sweep over both: O(len(ranges) + len(minus)) after sorting."""
    cuts = id_ranges_of(minus)
    out: list[Range] = []
    j = 0
    for first, b in id_ranges_of(ranges):
        while j < len(cuts) and cuts[j][1] < first:
            j += 1
        a, k = first, j
        while a <= b:
            if k >= len(cuts) or cuts[k][0] > b:
                out.append((a, b))
                break
            lo, hi = cuts[k]
            if lo > a:
                out.append((a, lo - 1))
            a = max(a, hi + 1)
            k += 1
    return out


def unexplained(
    lo: int, hi: int, stored: Iterable[int], explained: Iterable[Range] = ()
) -> list[Range]:
    """The ids in ``[lo, hi)`` that are not ``stored`` and not in ``explained`` ranges."""
    if hi <= lo:
        return []
    return subtract(subtract([(lo, hi - 1)], id_ranges(stored)), explained)


def count(ranges: Iterable[Range]) -> int:
    return sum(b - a + 1 for a, b in ranges)
