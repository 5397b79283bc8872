"""Pure checks of request input: path names, query parameters and rule ids.

Every failure raises :class:`InvalidParameter` naming the parameter and the reason, which the
API turns into a 400 problem. Nothing here touches Flask, sockets or files.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from storage_nodes import MAX_QUERY_ROWS
from vigil.names import NAME_RULE, is_name
from vigil.text import cut

#: Largest epoch-millisecond time InfluxDB can hold (its nanosecond times are int64).
MAX_TIME_MS = (2**63 - 1) // 1_000_000 - 1
DEFAULT_MEAN_N = 10
DEFAULT_HISTORY_LIMIT = 100
ORDERS = ("asc", "desc")
DEFAULT_ORDER = "desc"

#: An integer parameter: ASCII digits only, matched whole (``fullmatch``: with ``$``, "5\n"
#: passed; ``\d`` or ``int()`` alone take Arabic-Indic digits, " 5" or "5_0"). 19 digits
#: bound every value before ``int()`` sees it.
_DIGITS = re.compile(r"[0-9]{1,19}")
#: Longest value or parameter name echoed back in an error.
SHOWN_CHARS = 70


def shown(value: str) -> str:
    """``value`` for an error message: its repr, cut to about SHOWN_CHARS characters."""
    return repr(value) if len(value) <= SHOWN_CHARS else repr(value[: SHOWN_CHARS - 3]) + "..."


class InvalidParameter(ValueError):
    """A path or query parameter that cannot be used; ``parameter`` names it."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason


def check_path_name(parameter: str, value: str) -> str:
    """``value`` if it is a valid device id, metric name or rule id, else InvalidParameter."""
    if not is_name(value):
        raise InvalidParameter(parameter, f"{shown(value)} is not a valid {parameter}: {NAME_RULE}")
    return value


Args = Mapping[str, Sequence[str]]


def _only(args: Args, allowed: Sequence[str]) -> None:
    for name, values in args.items():
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise InvalidParameter(
                cut(name, SHOWN_CHARS), f"unknown query parameter (allowed: {known})"
            )
        if len(values) > 1:
            raise InvalidParameter(name, "given more than once")


def _int(args: Args, name: str, lo: int, hi: int, default: int | None) -> int | None:
    values = args.get(name)
    if not values:
        return default
    raw = values[0]
    if _DIGITS.fullmatch(raw) is None or not lo <= int(raw) <= hi:
        raise InvalidParameter(name, f"must be an integer from {lo} to {hi}, got {shown(raw)}")
    return int(raw)


def reject_args(args: Args) -> None:
    """For routes that take no query parameters: a typo must not pass silently."""
    _only(args, ())


def parse_mean_args(args: Args) -> int:
    """The ``n`` of ``/mean`` (last n values): 1..10000, default 10."""
    _only(args, ("n",))
    n = _int(args, "n", 1, MAX_QUERY_ROWS, DEFAULT_MEAN_N)
    assert n is not None
    return n


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    since_ms: int | None
    until_ms: int | None
    limit: int
    newest_first: bool

    @property
    def order(self) -> str:
        return "desc" if self.newest_first else "asc"


def parse_history_args(args: Args) -> HistoryQuery:
    """``since``/``until`` (epoch ms, inclusive), ``limit`` (1..10000, default 100) and
    ``order`` (asc|desc, default desc: the newest ``limit`` points)."""
    _only(args, ("since", "until", "limit", "order"))
    since = _int(args, "since", 0, MAX_TIME_MS, None)
    until = _int(args, "until", 0, MAX_TIME_MS, None)
    limit = _int(args, "limit", 1, MAX_QUERY_ROWS, DEFAULT_HISTORY_LIMIT)
    assert limit is not None
    order = (args.get("order") or [DEFAULT_ORDER])[0]
    if order not in ORDERS:
        raise InvalidParameter("order", f"must be asc or desc, got {shown(order)}")
    if since is not None and until is not None and since > until:
        raise InvalidParameter("since", f"{since} is after until ({until})")
    return HistoryQuery(since, until, limit, order == "desc")


def rule_id_from_name(name: str) -> str:
    """A rule id derived from a rule's name: accents dropped, lower case, every run of other
    characters turned into one ``-``, at most 64 characters ("High temp (lab)" ->
    "high-temp-lab"). Raises ValueError if nothing usable is left."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_.]+", "-", ascii_name.lower())
    slug = slug.strip("-_.")[:64].rstrip("-_.")
    if not is_name(slug):
        raise ValueError(f"cannot derive a rule id from the name {name!r}")
    return slug


#: the most items one page of a list gives, and the default
MAX_PAGE = 1000
DEFAULT_PAGE = 100


@dataclass(frozen=True, slots=True)
class PageQuery:
    """Filters (exact names) and a page: ``limit`` items from ``offset``."""

    filters: Mapping[str, str]
    limit: int
    offset: int


def parse_page_args(args: Args, filters: Mapping[str, Sequence[str] | None]) -> PageQuery:
    """``limit`` (1..1000, default 100), ``offset`` (default 0) and the ``filters``: each a
    name, one of the values given (or any valid name for None)."""
    _only(args, ("limit", "offset", *filters))
    limit = _int(args, "limit", 1, MAX_PAGE, DEFAULT_PAGE)
    offset = _int(args, "offset", 0, 10**9, 0)
    assert limit is not None and offset is not None
    chosen: dict[str, str] = {}
    for name, allowed in filters.items():
        values = args.get(name)
        if not values:
            continue
        value = values[0]
        if allowed is not None and value not in allowed:
            raise InvalidParameter(name, f"must be one of {', '.join(allowed)}, got {shown(value)}")
        chosen[name] = check_path_name(name, value) if allowed is None else value
    return PageQuery(chosen, limit, offset)
