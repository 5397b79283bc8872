"""Which market a symbol trades on, and whether it is open at a given instant (pure: the
clock is the caller's, so tests and the demo work at any hour)."""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from datetime import datetime

from vigil.agent_settings import WEEKDAYS, MarketSpec, minutes_of

#: a symbol no market claims: fetched at any hour
ALWAYS = MarketSpec(name="always", days=list(WEEKDAYS))


def market_of(symbol: str, markets: Sequence[MarketSpec]) -> MarketSpec:
    """The market whose longest suffix ends ``symbol`` (``ENI.MI`` → the one with ``.MI``);
    a symbol with no matching suffix goes to the market listing ``""``, else ``ALWAYS``."""
    upper = symbol.upper()
    best: tuple[int, MarketSpec] | None = None
    for market in markets:
        for suffix in market.suffixes:
            longer = best is None or len(suffix) > best[0]
            if suffix and upper.endswith(suffix.upper()) and longer:
                best = (len(suffix), market)
    if best is not None:
        return best[1]
    return next((m for m in markets if "" in m.suffixes), ALWAYS)


def is_open(market: MarketSpec, at: datetime) -> bool:
    """Whether ``market`` trades at ``at`` (an aware datetime)."""
    local = at.astimezone(zoneinfo.ZoneInfo(market.timezone))
    if WEEKDAYS[local.weekday()] not in market.days:
        return False
    if local.date().isoformat() in market.holidays:
        return False
    minute = local.hour * 60 + local.minute
    return minutes_of(market.open) <= minute < minutes_of(market.close)
