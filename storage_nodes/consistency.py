"""Write consistency and what a batch's outcome allows (pure).

A reading is acknowledged once ``required(level, replicas)`` of its replicas stored it and the
write for every other replica is durably queued as a hint. With two replicas, ``one`` means
"stored on one server and fsynced in the writer's hint queue for the other": two places.
``quorum`` of two is two, the same as ``all``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vigil.settings import Consistency


def required(level: Consistency, replicas: int) -> int:
    """How many of ``replicas`` servers must store a write at ``level``."""
    if replicas < 1:
        raise ValueError("a write needs at least one replica")
    if level == "one":
        return 1
    if level == "quorum":
        return replicas // 2 + 1
    return replicas


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A reading that fewer than the required replicas stored."""

    index: int
    stored: int
    needed: int
    missing: tuple[str, ...]  # its replicas that did not store it


def shortfalls(
    level: Consistency,
    replicas_of: Sequence[Sequence[str]],
    stored_on: Mapping[str, set[int]],
) -> list[Shortfall]:
    """The readings (by index) whose stores fall short of ``level``.

    ``replicas_of[i]`` names reading i's replicas (an empty tuple: not to be written, such
    as a refused reading); ``stored_on[server]`` holds the indexes that server stored.
    """
    out: list[Shortfall] = []
    for index, replicas in enumerate(replicas_of):
        if not replicas:
            continue
        have = [r for r in replicas if index in stored_on.get(r, ())]
        needed = required(level, len(replicas))
        if len(have) < needed:
            missing = tuple(r for r in replicas if index not in stored_on.get(r, ()))
            out.append(Shortfall(index, len(have), needed, missing))
    return out
