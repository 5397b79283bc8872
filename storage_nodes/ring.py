"""Consistent-hash ring with virtual nodes (pure).

Each server owns ``vnodes`` points on a 64-bit ring (the first 8 bytes of the MD5 of
``"{server}#{i}"``). A key's replicas are the first ``replication_factor`` distinct servers met
walking clockwise from the key's hash. Adding or removing a server only moves the keys next to
its points.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field


def hash64(key: str) -> int:
    return int.from_bytes(
        hashlib.md5(key.encode("utf-8"), usedforsecurity=False).digest()[:8], "big"
    )


@dataclass(frozen=True)
class HashRing:
    nodes: tuple[str, ...]
    vnodes: int = 256
    replication_factor: int = 2
    _points: tuple[int, ...] = field(init=False, repr=False)
    _owners: tuple[str, ...] = field(init=False, repr=False)

    def __init__(self, nodes: Sequence[str], vnodes: int = 256, replication_factor: int = 2):
        if not nodes:
            raise ValueError("a ring needs at least one node")
        if len(set(nodes)) != len(nodes):
            raise ValueError("node names must be unique")
        if not 1 <= replication_factor <= len(nodes):
            raise ValueError(
                f"replication factor {replication_factor} must be between 1 and {len(nodes)}"
            )
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        ring = sorted((hash64(f"{n}#{i}"), n) for n in nodes for i in range(vnodes))
        object.__setattr__(self, "nodes", tuple(nodes))
        object.__setattr__(self, "vnodes", vnodes)
        object.__setattr__(self, "replication_factor", replication_factor)
        object.__setattr__(self, "_points", tuple(p for p, _ in ring))
        object.__setattr__(self, "_owners", tuple(n for _, n in ring))

    def replicas(self, key: str) -> tuple[str, ...]:
        """The servers holding ``key``, primary first."""
        start = bisect.bisect_right(self._points, hash64(key))
        found: list[str] = []
        n = len(self._owners)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner not in found:
                found.append(owner)
                if len(found) == self.replication_factor:
                    break
        return tuple(found)

    def share(self) -> dict[str, float]:
        """Fraction of the hash space for which each server is the primary."""
        space = 2**64
        shares = dict.fromkeys(self.nodes, 0.0)
        for i, point in enumerate(self._points):
            prev = self._points[i - 1] if i else self._points[-1] - space
            shares[self._owners[i]] += (point - prev) / space
        return shares
