"""Recently stored reading ids (pure): drops redeliveries by message id.

A bounded LRU of ``(device, id)``. It is an optimisation, not the guarantee: storage writes
are idempotent (a reading always lands on the same point), so a redelivery the window has
forgotten, or one after a restart, is rewritten in place, never stored twice.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[tuple[str, int], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: tuple[str, int]) -> bool:
        if key in self._ids:
            self._ids.move_to_end(key)
            return True
        return False

    def add(self, key: tuple[str, int]) -> None:
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
