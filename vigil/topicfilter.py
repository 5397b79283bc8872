"""MQTT topic filters, ``$share``-aware (pure).

A filter as subscribed may be a shared subscription, ``$share/{group}/{filter}`` (MQTT 5,
section 4.8.2): the broker delivers each message to one member of the group, on the topic it
was published to. Matching must therefore use the filter *without* the ``$share/{group}/``
prefix; paho's ``topic_matches_sub`` does not strip it (paho issue #472), so a shared
subscription routed with it matches nothing.

:meth:`TopicFilter.parse` validates once (wildcards only as whole levels, ``#`` last, a
share name without wildcards), and :meth:`TopicFilter.matches` is a comparison of levels
precomputed at parse time, cheap enough for every message.
"""

from __future__ import annotations

from dataclasses import dataclass

SHARE_PREFIX = "$share/"


class InvalidFilter(ValueError):
    """A topic filter that MQTT does not allow."""


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """One subscription's filter: ``raw`` as subscribed, ``filter`` what topics match."""

    raw: str
    filter: str
    group: str | None
    _levels: tuple[str, ...]

    @classmethod
    def parse(cls, raw: str) -> TopicFilter:
        group: str | None = None
        text = raw
        if raw.startswith(SHARE_PREFIX):
            group, sep, text = raw[len(SHARE_PREFIX) :].partition("/")
            if not sep or not group or not text:
                raise InvalidFilter(f"{raw!r}: a shared subscription is $share/GROUP/FILTER")
            if "+" in group or "#" in group:
                raise InvalidFilter(f"{raw!r}: a share name holds no wildcard")
        if not text:
            raise InvalidFilter("a topic filter is not empty")
        if "\x00" in text:
            raise InvalidFilter(f"{raw!r}: a topic filter holds no NUL character")
        levels = tuple(text.split("/"))
        for i, level in enumerate(levels):
            if level == "#" and i != len(levels) - 1:
                raise InvalidFilter(f"{raw!r}: '#' only as the last level")
            if level not in ("+", "#") and ("+" in level or "#" in level):
                raise InvalidFilter(f"{raw!r}: a wildcard fills a whole level")
        return cls(raw, text, group, levels)

    @property
    def shared(self) -> bool:
        return self.group is not None

    def matches(self, topic: str) -> bool:
        """Whether a message published on ``topic`` matches this filter (MQTT 4.7): ``+``
        one level, ``#`` the rest (the parent level too), and no wildcard in the first level
        matches a topic starting with ``$``."""
        levels = self._levels
        parts = topic.split("/")
        if topic.startswith("$") and levels[0] in ("+", "#"):
            return False
        n = len(levels)
        if levels[-1] == "#":
            n -= 1
            if len(parts) < n:
                return False
        elif len(parts) != n:
            return False
        for i in range(n):
            level = levels[i]
            if level != "+" and level != parts[i]:
                return False
        return True
