"""Rule evaluation: pure, no I/O. What each kind of rule means is in :class:`vigil.messages.Rule`.

State is kept per *series* ``(rule id, device)``:

- the position ``(ts, id)`` of the last reading evaluated for it: a reading at or before that
  position (a redelivery, a late resend) is ignored, so it can never flip the state (for an
  ``offline`` rule, the position is the status message's time);
- while the rule fires, the :class:`Episode`: its alert id and what started it;
- what the kind needs besides: since when a breach has lasted (``for_s``), the values within
  a ``change`` rule's window, when the engine last saw a reading (``nodata``).

:meth:`Evaluator.evaluate` returns the transitions a reading causes, one ``Alert`` per
transition: ``firing`` when a series starts breaching (for long enough), ``resolved`` when it
is back (past the clear level). :meth:`Evaluator.status` does the same for a device status
(``offline`` rules), and :meth:`Evaluator.tick` for the passing of time alone (``nodata``, and
``offline`` rules with a duration): the engine calls it every second or so.

The alert id of an episode is derived from the rule id, the device and the reading (or the
status time) that started it, so re-evaluating the same messages after a crash, before the
state was saved, yields the same alerts with the same ids. An episode that time alone
started (no data) is named by the last reading seen, which the crash did not change.

The evaluator records which series changed since :meth:`Evaluator.take_changes` was last
called, so the caller can persist exactly those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Literal

from vigil.messages import Alert, DeviceStatus, Reading, Rule
from vigil.symbols import series_device

#: ``(rule id, device)``
SeriesKey = tuple[str, str]
#: values a ``change`` rule keeps per series at most (the oldest go first)
MAX_WINDOW_SAMPLES = 2048


def alert_id_for(rule_id: str, device: str, reading_id: int) -> str:
    """The id of the episode of ``rule_id`` on ``device`` started by reading ``reading_id``:
    ``hot:dev-1:1763800000000123``. Unambiguous, since names cannot contain ``:``."""
    return f"{rule_id}:{device}:{reading_id}"


def covers_device(rule: Rule, device: str) -> bool:
    """The rule watches ``device``: every device, that one, or one its pattern matches;
    of a user's rule, only among its owner's devices (its ``scope``)."""
    if rule.scope is not None and rule.symbol is None and device not in rule.scope:
        return False
    if rule.device is None:
        return True
    return fnmatchcase(device, rule.device) if rule.is_pattern else rule.device == device


def applies_to(rule: Rule, device: str) -> bool:
    return covers_device(rule, device)


def watches(rule: Rule, reading: Reading) -> bool:
    """``reading`` is one the rule evaluates (its metric is looked up by the caller)."""
    if not covers_device(rule, reading.device):
        return False
    return rule.symbol is None or reading.tags.get("symbol", "").upper() == rule.symbol


def breaches(rule: Rule, value: float) -> bool:
    """True when ``value`` is outside what the rule allows (strictly)."""
    if rule.kind == "band":
        return value < rule.low or value > rule.high
    return value > rule.threshold if rule.op == "above" else value < rule.threshold


def cleared(rule: Rule, value: float) -> bool:
    """True when a firing threshold or band rule resolves at ``value``: back at or past the
    clear level (the threshold itself when none is set), or back inside the band."""
    if rule.kind == "band":
        return rule.low <= value <= rule.high
    level = rule.threshold if rule.clear is None else rule.clear
    return value <= level if rule.op == "above" else value >= level


def change_percent(reference: float, value: float) -> float | None:
    """The change from ``reference`` to ``value`` in percent of the reference (None for 0)."""
    if reference == 0:
        return None
    return (value - reference) / abs(reference) * 100.0


def change_breaches(rule: Rule, percent: float) -> bool:
    if rule.direction == "rise":
        return percent >= rule.percent
    if rule.direction == "fall":
        return percent <= -rule.percent
    return abs(percent) >= rule.percent


@dataclass(frozen=True, slots=True)
class Episode:
    """A firing episode of one series."""

    alert_id: str
    started_at: int  # epoch ms of the reading (or status, or tick) that started it
    reading_id: int  # that reading's id (0 if no reading started it)


@dataclass(frozen=True, slots=True)
class SeriesState:
    """Where one series stands: the last reading evaluated and the episode if firing."""

    last_ts: int
    last_id: int
    firing: Episode | None = None
    #: the value of the last reading evaluated (what a resolution without a reading shows)
    last_value: float = 0.0
    #: since when (epoch ms: reading time, or engine time for offline) the breach has lasted
    pending_since: int | None = None
    #: a change rule's recent values, ``(ts, value)``, oldest first
    window: tuple[tuple[int, float], ...] = ()
    #: the engine's clock (epoch ms) when it last saw a reading (nodata) or the status
    seen_at: int = 0

    @property
    def position(self) -> tuple[int, int]:
        return (self.last_ts, self.last_id)


@dataclass(frozen=True, slots=True)
class StateChanges:
    """Series written or removed since the last :meth:`Evaluator.take_changes`."""

    upserts: Mapping[SeriesKey, SeriesState]
    removed: frozenset[SeriesKey]

    def __bool__(self) -> bool:
        return bool(self.upserts or self.removed)


@dataclass(frozen=True, slots=True)
class RuleSetChange:
    """What replacing the rule set did."""

    version: int
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    #: Firing episodes whose state was dropped (rule removed, or no longer covering it).
    dropped_firing: tuple[tuple[SeriesKey, Episode], ...] = ()
    #: Their resolutions: a ``resolved`` alert, with the reason, for each of them.
    resolved: tuple[Alert, ...] = ()

    @property
    def summary(self) -> str:
        parts = [
            f"added: {', '.join(self.added)}" if self.added else "",
            f"removed: {', '.join(self.removed)}" if self.removed else "",
            f"changed: {', '.join(self.changed)}" if self.changed else "",
        ]
        return "; ".join(p for p in parts if p) or "no rule changed"


def _same_meaning(before: Rule, after: Rule) -> bool:
    """A changed rule keeps its series (and a firing episode) only if it watches the same
    thing the same way: same kind and metric, and for a change rule the same window."""
    return (
        before.kind == after.kind
        and before.metric == after.metric
        and before.symbol == after.symbol
        and (after.kind != "change" or before.window_s == after.window_s)
    )


@dataclass
class Evaluator:
    """Evaluates readings and device statuses against a rule set, keeping per-series state."""

    version: int = 0
    _rules: dict[str, Rule] = field(default_factory=dict)
    _by_metric: dict[str, list[Rule]] = field(default_factory=dict)
    _timed: list[Rule] = field(default_factory=list)
    _offline: list[Rule] = field(default_factory=list)
    _states: dict[SeriesKey, SeriesState] = field(default_factory=dict)
    _dirty: set[SeriesKey] = field(default_factory=set)
    _removed: set[SeriesKey] = field(default_factory=set)

    @classmethod
    def restore(
        cls, rules: Iterable[Rule], version: int, states: Mapping[SeriesKey, SeriesState]
    ) -> Evaluator:
        """An evaluator resuming from saved rules and state (state of unknown rules, or of
        devices a rule no longer covers, is left out)."""
        ev = cls()
        ev._set_rules([r for r in rules if r.enabled], version)
        for key, state in states.items():
            rule = ev._rules.get(key[0])
            if rule is not None and covers_device(rule, key[1]):
                ev._states[key] = state
        return ev

    # -- rules ---------------------------------------------------------------------------
    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def rule(self, rule_id: str) -> Rule | None:
        return self._rules.get(rule_id)

    def _set_rules(self, rules: Iterable[Rule], version: int) -> None:
        self._rules = {r.id: r for r in rules}
        self._by_metric = {}
        for rule in self._rules.values():
            if rule.kind != "offline":
                self._by_metric.setdefault(rule.metric, []).append(rule)
        self._timed = [r for r in self._rules.values() if r.kind == "nodata"]
        self._offline = [r for r in self._rules.values() if r.kind == "offline"]
        self.version = version

    def replace_rules(self, rules: Iterable[Rule], version: int, now_ms: int = 0) -> RuleSetChange:
        """Install a new rule set. Series of removed rules are dropped, as are series a
        changed rule no longer covers (other device, metric, symbol or kind); a rule whose
        levels, name or severity changed keeps its series and goes on from the current
        state. A dropped series that was firing resolves: ``resolved`` holds its alert (at
        ``now_ms``, with the last value seen and the reason), so no alert stays open
        because its rule went away."""
        old = self._rules
        incoming = list(rules)
        disabled = {r.id for r in incoming if not r.enabled}
        self._set_rules([r for r in incoming if r.enabled], version)
        new = self._rules
        dropped: list[tuple[SeriesKey, Episode]] = []
        resolved: list[Alert] = []
        for key in sorted(self._states):
            rule, before = new.get(key[0]), old.get(key[0])
            keep = (
                rule is not None
                and covers_device(rule, key[1])
                and (before is None or _same_meaning(before, rule))
            )
            if not keep:
                state = self._states.pop(key)
                self._dirty.discard(key)
                self._removed.add(key)
                if state.firing is not None:
                    dropped.append((key, state.firing))
                    if before is not None:
                        if key[0] in disabled:
                            why = "rule disabled"
                        elif rule is None:
                            why = "rule deleted"
                        elif not covers_device(rule, key[1]) or rule.metric == before.metric:
                            why = f"rule changed: it no longer covers {key[1]} {before.metric}"
                        else:
                            why = f"rule changed: it no longer watches {before.metric}"
                        resolved.append(_resolution(before, key[1], state, now_ms, why))
        return RuleSetChange(
            version=version,
            added=tuple(sorted(new.keys() - old.keys())),
            removed=tuple(sorted(old.keys() - new.keys())),
            changed=tuple(sorted(k for k in new.keys() & old.keys() if new[k] != old[k])),
            dropped_firing=tuple(dropped),
            resolved=tuple(resolved),
        )

    # -- readings ------------------------------------------------------------------------
    def evaluate(self, reading: Reading, now_ms: int | None = None) -> list[Alert]:
        """The transitions ``reading`` causes (none if it is not newer than the last reading
        evaluated for a series); ``now_ms``: the engine's clock (for ``nodata`` rules; the
        reading's time if not given). A quote is evaluated under its symbol's pseudo-device
        (``quote.AAPL``), whichever agent fetched it."""
        out: list[Alert] = []
        reading = reading.as_stored()
        position = (reading.ts, reading.id)
        seen_at = reading.ts if now_ms is None else now_ms
        for rule in self._by_metric.get(reading.metric, ()):
            if not watches(rule, reading):
                continue
            key = (rule.id, reading.device)
            prev = self._states.get(key)
            if prev is not None and position <= prev.position:
                continue
            state, alert = _step(rule, prev, reading, seen_at)
            if alert is not None:
                out.append(alert)
            self._put(key, state)
        return out

    def status(self, status: DeviceStatus, now_ms: int) -> list[Alert]:
        """The transitions a device status causes on ``offline`` rules. A status not newer
        than the last one evaluated is ignored. One without a time (the last will, fixed
        when the agent connected) counts at ``now_ms`` if it changes the state: the agent's
        clock and the engine's need not agree, so it is not compared with the others."""
        out: list[Alert] = []
        offline = status.state == "offline"
        value = 1.0 if offline else 0.0
        for rule in self._offline:
            if not covers_device(rule, status.device):
                continue
            key = (rule.id, status.device)
            prev = self._states.get(key)
            if status.ts is None:
                if prev is not None and prev.last_value == value:
                    continue  # the retained last will again, after a resubscribe
                ts, last_ts = now_ms, prev.last_ts if prev is not None else 0
            elif prev is not None and status.ts <= prev.last_ts:
                continue
            else:
                ts = last_ts = status.ts
            firing = prev.firing if prev is not None else None
            pending: int | None = None
            if offline and firing is None:
                pending = prev.pending_since if prev and prev.pending_since is not None else now_ms
                if rule.for_s == 0:
                    firing = Episode(alert_id_for(rule.id, status.device, ts), ts, 0)
                    pending = None
                    out.append(
                        _timed_alert(rule, status.device, firing, "firing", value=1.0, ts=ts)
                    )
            elif not offline and firing is not None:
                out.append(_timed_alert(rule, status.device, firing, "resolved", value=0.0, ts=ts))
                firing = None
            self._put(key, SeriesState(last_ts, 0, firing, value, pending, (), now_ms))
        return out

    def tick(self, now_ms: int) -> list[Alert]:
        """What the passing of time fires: ``nodata`` rules whose series had no reading for
        ``for_s`` (a rule for one device watches it from the first tick, even if it never
        sent anything), and ``offline`` rules whose device stayed offline for ``for_s``."""
        out: list[Alert] = []
        for rule in self._timed:
            one = series_device(rule.symbol) if rule.symbol is not None else rule.device
            if one is not None and (
                rule.symbol is not None or (not rule.is_pattern and covers_device(rule, one))
            ):
                key = (rule.id, one)
                if key not in self._states:
                    self._put(key, SeriesState(0, 0, None, 0.0, None, (), now_ms))
            limit = rule.for_s * 1000
            for key, state in self._series_of(rule.id):
                if state.firing is None and now_ms - state.seen_at >= limit:
                    episode = Episode(alert_id_for(rule.id, key[1], state.last_id), now_ms, 0)
                    out.append(
                        _timed_alert(
                            rule, key[1], episode, "firing", value=state.last_value, ts=now_ms
                        )
                    )
                    self._put(key, replace(state, firing=episode))
        for rule in self._offline:
            if rule.for_s == 0:
                continue
            for key, state in self._series_of(rule.id):
                since = state.pending_since
                if (
                    state.firing is None
                    and since is not None
                    and now_ms - since >= rule.for_s * 1000
                ):
                    episode = Episode(alert_id_for(rule.id, key[1], since), now_ms, 0)
                    out.append(_timed_alert(rule, key[1], episode, "firing", value=1.0, ts=now_ms))
                    self._put(key, replace(state, firing=episode, pending_since=None))
        return out

    def _series_of(self, rule_id: str) -> list[tuple[SeriesKey, SeriesState]]:
        return [(k, s) for k, s in sorted(self._states.items()) if k[0] == rule_id]

    def _put(self, key: SeriesKey, state: SeriesState) -> None:
        self._states[key] = state
        self._dirty.add(key)
        self._removed.discard(key)

    # -- state ---------------------------------------------------------------------------
    def state(self, rule_id: str, device: str) -> SeriesState | None:
        return self._states.get((rule_id, device))

    @property
    def states(self) -> Mapping[SeriesKey, SeriesState]:
        return dict(self._states)

    @property
    def has_timed_rules(self) -> bool:
        return bool(self._timed or any(r.for_s for r in self._offline))

    def firing_count(self) -> int:
        return sum(1 for s in self._states.values() if s.firing is not None)

    def take_changes(self) -> StateChanges:
        """The series changed since the last call (to persist), and forget them."""
        changes = StateChanges({k: self._states[k] for k in self._dirty}, frozenset(self._removed))
        self._dirty.clear()
        self._removed.clear()
        return changes


def _step(
    rule: Rule, prev: SeriesState | None, reading: Reading, seen_at: int
) -> tuple[SeriesState, Alert | None]:
    """One reading of one series: its new state and the transition, if any."""
    firing = prev.firing if prev is not None else None
    pending = prev.pending_since if prev is not None else None
    window = prev.window if prev is not None else ()
    value, alert = reading.value, None
    if rule.kind in ("threshold", "band"):
        if firing is not None:
            if cleared(rule, value):
                alert = _alert(rule, reading, firing, "resolved")
                firing = None
        elif breaches(rule, value):
            pending = reading.ts if pending is None else pending
            if reading.ts - pending >= rule.for_s * 1000:
                firing = _episode(rule, reading)
                pending = None
                alert = _alert(rule, reading, firing, "firing")
        else:
            pending = None
    elif rule.kind == "change":
        start = reading.ts - int(rule.window_s * 1000)
        window = tuple(s for s in window if s[0] >= start)
        percent = change_percent(window[0][1], value) if window else None
        breach = percent is not None and change_breaches(rule, percent)
        if firing is None and breach and percent is not None:
            firing = _episode(rule, reading)
            alert = _alert(rule, reading, firing, "firing", percent=percent, reference=window[0][1])
        elif firing is not None and not breach:
            alert = _alert(rule, reading, firing, "resolved", percent=percent)
            firing = None
        window = (*window, (reading.ts, value))[-MAX_WINDOW_SAMPLES:]
    elif rule.kind == "nodata" and firing is not None:
        alert = _alert(rule, reading, firing, "resolved")
        firing = None
    seen = seen_at if rule.kind == "nodata" else 0
    state = SeriesState(reading.ts, reading.id, firing, value, pending, window, seen)
    return state, alert


def _episode(rule: Rule, reading: Reading) -> Episode:
    return Episode(alert_id_for(rule.id, reading.device, reading.id), reading.ts, reading.id)


def _num(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def _seconds(value: float) -> str:
    return f"{_num(value)} s"


def _subject(rule: Rule, device: str) -> str:
    """``temperature on dev-1``, ``price of AAPL``."""
    if rule.symbol is not None:
        return f"{rule.metric} of {rule.symbol}"
    return f"{rule.metric} on {device}"


def _detail(
    rule: Rule,
    device: str,
    state: Literal["firing", "resolved"],
    value: float,
    *,
    percent: float | None = None,
    reference: float | None = None,
) -> str:
    """The sentence a person reads in the alert: what is (or is no longer) wrong."""
    what = _subject(rule, device)
    firing = state == "firing"
    if rule.kind == "threshold":
        if firing:
            held = f" for {_seconds(rule.for_s)}" if rule.for_s else ""
            return f"{what} is {_num(value)}, {rule.op} {_num(rule.threshold)}{held}"
        level = rule.threshold if rule.clear is None else rule.clear
        back = "at or below" if rule.op == "above" else "at or above"
        return f"{what} is {_num(value)}, back {back} {_num(level)}"
    if rule.kind == "band":
        band = f"{_num(rule.low)}..{_num(rule.high)}"
        if firing:
            held = f" for {_seconds(rule.for_s)}" if rule.for_s else ""
            return f"{what} is {_num(value)}, outside {band}{held}"
        return f"{what} is {_num(value)}, back inside {band}"
    if rule.kind == "change":
        window = _seconds(rule.window_s)
        if firing and percent is not None:
            verb = "rose" if percent >= 0 else "fell"
            since = f" ({_num(reference)} -> {_num(value)})" if reference is not None else ""
            return f"{what} {verb} {abs(percent):.2f}% in {window}{since}"
        moved = "" if percent is None else f" ({percent:+.2f}%)"
        return f"{what} is {_num(value)}, within {_num(rule.percent)}% over {window}{moved}"
    if rule.kind == "nodata":
        if firing:
            return f"no {rule.metric} from {device} for {_seconds(rule.for_s)}"
        return f"{rule.metric} from {device} again: {_num(value)}"
    if firing:
        held = f" for {_seconds(rule.for_s)}" if rule.for_s else ""
        return f"{device} is offline{held}"
    return f"{device} is back online"


def _shown_threshold(rule: Rule, value: float) -> tuple[float, str]:
    """The level and the relation an alert shows: the threshold and op; for a band the
    bound crossed (``outside``); the percent and direction of a change; the duration of a
    nodata or offline rule."""
    if rule.kind == "threshold":
        return rule.threshold, rule.op
    if rule.kind == "band":
        return (rule.low if value < rule.low else rule.high), "outside"
    if rule.kind == "change":
        return rule.percent, rule.direction
    return rule.for_s, rule.kind


def _alert(
    rule: Rule,
    reading: Reading,
    episode: Episode,
    state: Literal["firing", "resolved"],
    *,
    percent: float | None = None,
    reference: float | None = None,
) -> Alert:
    threshold, op = _shown_threshold(rule, reading.value)
    return Alert(
        alert_id=episode.alert_id,
        rule_id=rule.id,
        rule=rule.name or rule.id,
        device=reading.device,
        metric=rule.metric,
        value=reading.value,
        threshold=threshold,
        op=op,
        state=state,
        severity=rule.severity,
        started_at=episode.started_at,
        ts=reading.ts,
        resolved_at=reading.ts if state == "resolved" else None,
        reading_id=reading.id,
        kind=rule.kind,
        detail=_detail(
            rule, reading.device, state, reading.value, percent=percent, reference=reference
        ),
        symbol=rule.symbol,
        owner=rule.owner,
    )


def _timed_alert(
    rule: Rule,
    device: str,
    episode: Episode,
    state: Literal["firing", "resolved"],
    *,
    value: float,
    ts: int,
) -> Alert:
    """A transition no reading caused: no data for a while, a status."""
    threshold, op = _shown_threshold(rule, value)
    return Alert(
        alert_id=episode.alert_id,
        rule_id=rule.id,
        rule=rule.name or rule.id,
        device=device,
        metric=rule.metric,
        value=value,
        threshold=threshold,
        op=op,
        state=state,
        severity=rule.severity,
        started_at=episode.started_at,
        ts=ts,
        resolved_at=ts if state == "resolved" else None,
        reading_id=None,
        kind=rule.kind,
        detail=_detail(rule, device, state, value),
        symbol=rule.symbol,
        owner=rule.owner,
    )


def _resolution(rule: Rule, device: str, state: SeriesState, now_ms: int, reason: str) -> Alert:
    """The ``resolved`` alert of a firing series whose rule no longer covers it."""
    assert state.firing is not None
    threshold, op = _shown_threshold(rule, state.last_value)
    return Alert(
        alert_id=state.firing.alert_id,
        rule_id=rule.id,
        rule=rule.name or rule.id,
        device=device,
        metric=rule.metric,
        value=state.last_value,
        threshold=threshold,
        op=op,
        state="resolved",
        severity=rule.severity,
        started_at=state.firing.started_at,
        ts=max(now_ms, state.last_ts),
        resolved_at=max(now_ms, state.last_ts),
        reading_id=None,
        reason=reason,
        kind=rule.kind,
        detail=f"{_subject(rule, device)}: {reason}",
        symbol=rule.symbol,
        owner=rule.owner,
    )
