"""Size-and-linger batching (pure): a batch closes when it holds ``max_items`` or when its
first item has waited ``linger_s``. The clock is injected so tests need no sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self, max_items: int, linger_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.linger_s = linger_s
        self._clock = clock
        self._items: list[T] = []
        self._opened_at = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        if not self._items:
            self._opened_at = self._clock()
        self._items.append(item)

    def extend(self, items: list[T]) -> None:
        """Add items that arrived together; past ``max_items`` they wait for the next
        batches, due when the first would have been."""
        if items and not self._items:
            self._opened_at = self._clock()
        self._items.extend(items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_items

    def time_left(self) -> float | None:
        """Seconds until the open batch is due, 0 if due now, None if no batch is open."""
        if not self._items:
            return None
        return max(0.0, self._opened_at + self.linger_s - self._clock())

    def ready(self) -> bool:
        left = self.time_left()
        return self.full or left == 0.0

    def take(self) -> list[T]:
        """The batch: at most ``max_items``, the oldest first."""
        if len(self._items) <= self.max_items:
            items, self._items = self._items, []
            return items
        items, self._items = self._items[: self.max_items], self._items[self.max_items :]
        return items
