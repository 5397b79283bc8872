"""The cluster layout: which servers hold what, persisted in one file every service watches.

``layout.json`` (written atomically by the operator's commands) holds the servers with their
URL and state (``active`` or ``failed``: drained on purpose), the replication factor, the
strategy (``consistent``: the ring with the replication factor; ``full``: every server holds
everything), and a version that grows with every change. While data moves (a server added or
removed, the strategy switched) it also holds the ``previous`` placement: writes then go to
the old and the new owners of a series, and reads consult both, until the move is done.

The configuration's ``storage.nodes`` seeds the layout; once the file exists, it wins.
Parsing is total: any bytes give a Layout or a LayoutError that says what is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from storage_nodes.ring import HashRing
from vigil.atomic import write_atomic
from vigil.jsonin import JsonInputError
from vigil.jsonin import loads as json_loads
from vigil.names import is_name
from vigil.settings import StorageSettings

Strategy = Literal["consistent", "full"]
STRATEGIES: tuple[Strategy, ...] = ("consistent", "full")
#: ``active``; ``failed``: drained on purpose (writes hint, reads avoid it) but still an owner;
#: ``leaving``: being removed, owns nothing in the new placement, serves until the move ends.
ServerState = Literal["active", "failed", "leaving"]
MAX_LAYOUT_BYTES = 4 * 1024 * 1024
#: Most servers a layout holds (placement hashes servers x vnodes points).
MAX_SERVERS = 64
#: Most deleted series remembered (each one a few dozen bytes of the layout file).
MAX_TOMBSTONES = 10_000


class LayoutError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    url: str
    state: ServerState = "active"


#: the series of a tombstone that deletes every series' points before its time
ALL_SERIES = "*"


@dataclass(frozen=True, slots=True)
class Tombstone:
    """Every point of ``series`` before ``before_ns`` is deleted: hints, read repair and
    anti-entropy never bring one back, and reads leave out any a server still holds."""

    series: str  # device/metric
    before_ns: int
    at_ms: int  # when it was deleted


@dataclass(frozen=True, slots=True)
class Placement:
    """Where series live: pure, cached ring."""

    servers: tuple[str, ...]
    strategy: Strategy
    replication_factor: int
    vnodes: int
    _ring: HashRing = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rf = self.replication_factor if self.strategy == "consistent" else len(self.servers)
        object.__setattr__(
            self, "_ring", HashRing(list(self.servers), self.vnodes, min(rf, len(self.servers)))
        )

    @property
    def ring(self) -> HashRing:
        return self._ring

    def replicas(self, key: str) -> tuple[str, ...]:
        return self._ring.replicas(key)

    def to_json(self) -> dict[str, Any]:
        return {
            "servers": list(self.servers),
            "strategy": self.strategy,
            "replication_factor": self.replication_factor,
        }


@dataclass(frozen=True, slots=True)
class Layout:
    version: int
    servers: tuple[Server, ...]
    strategy: Strategy
    replication_factor: int
    vnodes: int
    previous: Placement | None = None
    tombstones: tuple[Tombstone, ...] = ()
    _placement: Placement = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_placement",
            Placement(
                tuple(s.name for s in self.servers if s.state != "leaving"),
                self.strategy,
                self.replication_factor,
                self.vnodes,
            ),
        )

    @property
    def placement(self) -> Placement:
        return self._placement

    @property
    def moving(self) -> bool:
        return self.previous is not None

    def server(self, name: str) -> Server:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)

    def names(self) -> list[str]:
        return [s.name for s in self.servers]

    def owners(self, key: str) -> tuple[str, ...]:
        """The servers a series is written to: its replicas, and during a move also its
        previous replicas (new owners first)."""
        now = self._placement.replicas(key)
        if self.previous is None:
            return now
        return now + tuple(n for n in self.previous.replicas(key) if n not in now)

    def replicas_now(self, key: str) -> tuple[str, ...]:
        return self._placement.replicas(key)

    def deleted_before(self, series: str) -> int | None:
        """Points of ``series`` before this time (ns) are deleted (by its own tombstone or
        the one of every series, ``ALL_SERIES``); None if none are."""
        found = [t.before_ns for t in self.tombstones if t.series in (series, ALL_SERIES)]
        return max(found) if found else None

    def with_tombstones(self, *tombstones: Tombstone) -> Layout:
        """This layout with ``tombstones`` added (each replacing its series' earlier one,
        keeping the later time), as one new version."""
        kept = list(self.tombstones)
        for tombstone in tombstones:
            before = max(
                [
                    tombstone.before_ns,
                    *(t.before_ns for t in kept if t.series in (tombstone.series, ALL_SERIES)),
                ]
            )
            kept = [t for t in kept if t.series != tombstone.series]
            if len(kept) >= MAX_TOMBSTONES:
                raise LayoutError(f"at most {MAX_TOMBSTONES} deleted series are remembered")
            kept.append(replace(tombstone, before_ns=before))
        return replace(self, version=self.version + 1, tombstones=tuple(kept))

    def with_state(self, name: str, state: ServerState) -> Layout:
        self.server(name)
        servers = tuple(replace(s, state=state) if s.name == name else s for s in self.servers)
        return replace(self, version=self.version + 1, servers=servers)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "strategy": self.strategy,
            "replication_factor": self.replication_factor,
            "vnodes": self.vnodes,
            "servers": [{"name": s.name, "url": s.url, "state": s.state} for s in self.servers],
            "previous": None if self.previous is None else self.previous.to_json(),
            "tombstones": [
                {"series": t.series, "before_ns": t.before_ns, "at_ms": t.at_ms}
                for t in self.tombstones
            ],
        }


def seed(settings: StorageSettings) -> Layout:
    """The layout the configuration describes (version 0: not written yet)."""
    return Layout(
        0,
        tuple(Server(n.name, n.url) for n in settings.nodes),
        "consistent",
        settings.replication_factor,
        settings.vnodes,
    )


def _want(cond: bool, where: str, why: str) -> None:
    if not cond:
        raise LayoutError(f"{where}: {why}")


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    _want(isinstance(v, int) and not isinstance(v, bool), where, "must be an integer")
    _want(lo <= v <= hi, where, f"must be between {lo} and {hi}")
    return int(v)


def _strategy(v: Any, where: str) -> Strategy:
    _want(v in STRATEGIES, where, f"must be one of {', '.join(STRATEGIES)}")
    return v  # type: ignore[no-any-return]


def _names(v: Any, where: str) -> tuple[str, ...]:
    _want(isinstance(v, list) and len(v) >= 1, where, "must be a non-empty list")
    out = []
    for i, n in enumerate(v):
        _want(isinstance(n, str) and is_name(n), f"{where}[{i}]", "must be a server name")
        out.append(n)
    _want(len(set(out)) == len(out), where, "server names must be unique")
    return tuple(out)


def parse(raw: bytes) -> Layout:
    """A layout from the bytes of ``layout.json``; LayoutError names the key and the reason."""
    try:
        doc = json_loads(raw, max_bytes=MAX_LAYOUT_BYTES)
    except JsonInputError as exc:
        raise LayoutError(f"not JSON: {exc}") from None
    _want(isinstance(doc, dict), "layout", "must be an object")
    version = _int(doc.get("version"), "version", 0, 2**53)
    strategy = _strategy(doc.get("strategy"), "strategy")
    vnodes = _int(doc.get("vnodes"), "vnodes", 1, 4096)
    raw_servers = doc.get("servers")
    _want(
        isinstance(raw_servers, list) and 1 <= len(raw_servers) <= MAX_SERVERS,
        "servers",
        f"must be a list of 1 to {MAX_SERVERS} servers",
    )
    servers: list[Server] = []
    for i, s in enumerate(raw_servers):
        where = f"servers[{i}]"
        _want(isinstance(s, dict), where, "must be an object")
        name, url, state = s.get("name"), s.get("url"), s.get("state", "active")
        _want(isinstance(name, str) and is_name(name), f"{where}.name", "must be a server name")
        _want(
            isinstance(url, str) and url.startswith(("http://", "https://")) and len(url) < 512,
            f"{where}.url",
            "must be an http(s) URL",
        )
        _want(
            state in ("active", "failed", "leaving"),
            f"{where}.state",
            "must be active, failed or leaving",
        )
        servers.append(Server(name, url, state))
    names = [s.name for s in servers]
    _want(len(set(names)) == len(names), "servers", "server names must be unique")
    placed = [s for s in servers if s.state != "leaving"]
    _want(bool(placed), "servers", "at least one server must not be leaving")
    rf = _int(doc.get("replication_factor"), "replication_factor", 1, MAX_SERVERS)
    previous = None
    prev = doc.get("previous")
    if prev is not None:
        _want(isinstance(prev, dict), "previous", "must be an object or null")
        pservers = _names(prev.get("servers"), "previous.servers")
        _want(set(pservers) <= set(names), "previous.servers", "names a server not in servers")
        pstrategy = _strategy(prev.get("strategy"), "previous.strategy")
        prf = _int(prev.get("replication_factor"), "previous.replication_factor", 1, MAX_SERVERS)
        previous = Placement(pservers, pstrategy, prf, vnodes)
    raw_tombs = doc.get("tombstones", [])
    _want(
        isinstance(raw_tombs, list) and len(raw_tombs) <= MAX_TOMBSTONES,
        "tombstones",
        f"must be a list of at most {MAX_TOMBSTONES}",
    )
    tombstones = []
    for i, t in enumerate(raw_tombs):
        where = f"tombstones[{i}]"
        _want(isinstance(t, dict), where, "must be an object")
        series = t.get("series")
        device, _, metric = series.partition("/") if isinstance(series, str) else ("", "", "")
        _want(
            series == ALL_SERIES or (is_name(device) and is_name(metric)),
            f"{where}.series",
            f"must be device/metric or {ALL_SERIES}",
        )
        before = _int(t.get("before_ns"), f"{where}.before_ns", 0, 2**63 - 1)
        at_ms = _int(t.get("at_ms"), f"{where}.at_ms", 0, 2**63 - 1)
        tombstones.append(Tombstone(str(series), before, at_ms))
    return Layout(version, tuple(servers), strategy, rf, vnodes, previous, tuple(tombstones))


def load(path: Path | None, settings: StorageSettings) -> Layout:
    """The persisted layout, or the configuration's seed if none was written yet (or the
    configuration names no layout file)."""
    if path is None:
        return seed(settings)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return seed(settings)
    except OSError as exc:
        raise LayoutError(f"cannot read {path}: {exc}") from exc
    try:
        return parse(raw)
    except LayoutError as exc:
        raise LayoutError(f"{path}: {exc}") from None


def save(path: Path, layout: Layout) -> None:
    write_atomic(path, json.dumps(layout.to_json(), indent=2) + "\n", mode=0o644)


def stamp(path: Path | None) -> tuple[int, int, int] | None:
    """What changes when the file is replaced (inode, size, mtime), None if absent."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def moved(layout: Layout, servers: Sequence[Server], strategy: Strategy) -> Layout:
    """The layout of a move to ``servers`` (a leaving one marked ``leaving``) and
    ``strategy``, with the current placement as ``previous``."""
    if layout.previous is not None:
        raise LayoutError("a move is already in progress; finish it first")
    placed = [s for s in servers if s.state != "leaving"]
    if not placed:
        raise LayoutError("at least one server must stay")
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise LayoutError("server names must be unique")
    if len(names) > MAX_SERVERS:
        raise LayoutError(f"at most {MAX_SERVERS} servers")
    gone = set(layout.placement.servers) - set(names)
    if gone:
        raise LayoutError(
            f"{', '.join(sorted(gone))} must stay in the layout as leaving until the move ends"
        )
    # The replication factor is what is wanted; placement uses at most the servers there are,
    # so a cluster shrunk below it gets it back when servers are added.
    return Layout(
        layout.version + 1,
        tuple(servers),
        strategy,
        layout.replication_factor,
        layout.vnodes,
        layout.placement,
        layout.tombstones,
    )


def settled(layout: Layout) -> Layout:
    """The layout once a move is done: no previous placement, leaving servers gone."""
    return replace(
        layout,
        version=layout.version + 1,
        servers=tuple(s for s in layout.servers if s.state != "leaving"),
        previous=None,
    )
