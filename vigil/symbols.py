"""Share symbols (tickers) and where their quotes live, pure.

- **A symbol** is what Yahoo Finance calls a ticker: up to 20 characters, letters, digits
  and ``. - =`` after an optional ``^`` (``AAPL``, ``ENI.MI``, ``^GSPC``, ``EURUSD=X``),
  compared upper-case.
- **A quote** is a reading of kind ``quote``, metric ``price``, tags ``symbol`` and
  ``source`` (``yfinance`` or ``simulated``), unit its currency. It is published by the one
  agent the API assigned the symbol to, and only devices configured as quote agents
  (``devices[].quotes: true``) may publish quotes at all: a sensor device cannot forge a
  price that every follower's rules read.
- **Stored once per symbol**: whichever agent fetched it, a quote is stored (and placed on
  the ring, and evaluated by the alert engine) as series ``price`` of the pseudo-device
  ``quote.<SYMBOL>`` (characters a name cannot hold dropped: ``quote.GSPC`` for ``^GSPC``).
  No device may have an id starting with ``quote.``.
- **Assignment**: each followed symbol goes to exactly one quote agent, by rendezvous
  hashing over the agents online (all configured ones when none is): stable while the
  agents are, and an agent going away moves only its own symbols.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from vigil.names import is_name
from vigil.text import shown

MAX_SYMBOL_LEN = 20
SYMBOL_PATTERN = re.compile(r"\^?[A-Za-z0-9][A-Za-z0-9.\-=]{0,18}")
SYMBOL_RULE = "up to 20 characters from A-Z 0-9 . - =, after an optional ^ (an index)"
#: the metric of every quote
PRICE_METRIC = "price"
#: what starts the id of a symbol's pseudo-device (no real device may use it)
QUOTE_DEVICE_PREFIX = "quote."
QUOTE_SOURCES = ("yfinance", "simulated")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


class InvalidSymbol(ValueError):
    pass


def is_symbol(value: object) -> bool:
    return isinstance(value, str) and SYMBOL_PATTERN.fullmatch(value) is not None


def check_symbol(value: object, where: str = "symbol") -> str:
    """``value`` upper-cased if it is a symbol, else InvalidSymbol naming ``where``."""
    if not is_symbol(value):
        raise InvalidSymbol(f"{where}: {shown(value)} is not a ticker symbol ({SYMBOL_RULE})")
    assert isinstance(value, str)
    return value.upper()


def series_device(symbol: str) -> str:
    """The pseudo-device a symbol's quotes are stored under: ``quote.AAPL``."""
    device = (QUOTE_DEVICE_PREFIX + _NOT_NAME.sub("", symbol.upper()))[:64]
    assert is_name(device), device
    return device


def is_quote_device(device: str) -> bool:
    """Whether ``device`` is a symbol's pseudo-device (a name no real device may take)."""
    return device.startswith(QUOTE_DEVICE_PREFIX)


def _weight(symbol: str, agent: str) -> bytes:
    return hashlib.sha256(f"{symbol}\x00{agent}".encode()).digest()


def assign(symbols: Iterable[str], agents: Iterable[str]) -> dict[str, list[str]]:
    """``{agent: [symbols, sorted]}`` for every agent (an agent may get none): each symbol
    to the agent of the highest rendezvous weight. No agent: nothing is assigned."""
    pool = sorted(set(agents))
    out: dict[str, list[str]] = {a: [] for a in pool}
    if not pool:
        return out
    for symbol in sorted({s.upper() for s in symbols}):
        out[max(pool, key=lambda a: _weight(symbol, a))].append(symbol)
    return out
