"""Threshold rule evaluation: pure, no I/O.

A rule fires while ``metric`` of a device is strictly above (or below) its threshold; a value
equal to the threshold is inside. State is kept per *series* ``(rule id, device)``:

- the position ``(ts, id)`` of the last reading evaluated for it: a reading at or before that
  position (a redelivery, a late resend) is ignored, so it can never flip the state;
- while the rule fires, the :class:`Episode`: its alert id and the reading that started it.

:meth:`Evaluator.evaluate` returns the transitions a reading causes, one ``Alert`` per
transition: ``firing`` when a series leaves the inside, ``resolved`` when it comes back. The
alert id of an episode is derived from the rule id, the device and the starting reading's id,
so re-evaluating the same readings (after a crash, before the state was saved) yields the
same alerts with the same ids.

The evaluator records which series changed since :meth:`Evaluator.take_changes` was last
called, so the caller can persist exactly those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from vigil.messages import Alert, Reading, Rule

#: ``(rule id, device)``
SeriesKey = tuple[str, str]


def alert_id_for(rule_id: str, device: str, reading_id: int) -> str:
    """The id of the episode of ``rule_id`` on ``device`` started by reading ``reading_id``:
    ``hot:dev-1:1763800000000123``. Unambiguous, since names cannot contain ``:``."""
    return f"{rule_id}:{device}:{reading_id}"


def breaches(rule: Rule, value: float) -> bool:
    """True when ``value`` is outside the rule's threshold (strictly)."""
    return value > rule.threshold if rule.op == "above" else value < rule.threshold


def applies_to(rule: Rule, device: str) -> bool:
    return rule.device is None or rule.device == device


@dataclass(frozen=True, slots=True)
class Episode:
    """A firing episode of one series."""

    alert_id: str
    started_at: int  # epoch ms of the reading that started it
    reading_id: int  # that reading's id


@dataclass(frozen=True, slots=True)
class SeriesState:
    """Where one series stands: the last reading evaluated and the episode if firing."""

    last_ts: int
    last_id: int
    firing: Episode | None = None
    #: the value of the last reading evaluated (what a resolution without a reading shows)
    last_value: float = 0.0

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


@dataclass
class Evaluator:
    """Evaluates readings against a rule set, keeping per-series state."""

    version: int = 0
    _rules: dict[str, Rule] = field(default_factory=dict)
    _by_metric: dict[str, list[Rule]] = field(default_factory=dict)
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
            if rule is not None and applies_to(rule, key[1]):
                ev._states[key] = state
        return ev

    # -- rules ---------------------------------------------------------------------------
    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def _set_rules(self, rules: Iterable[Rule], version: int) -> None:
        self._rules = {r.id: r for r in rules}
        self._by_metric = {}
        for rule in self._rules.values():
            self._by_metric.setdefault(rule.metric, []).append(rule)
        self.version = version

    def replace_rules(self, rules: Iterable[Rule], version: int, now_ms: int = 0) -> RuleSetChange:
        """Install a new rule set. Series of removed rules are dropped, as are series a
        changed rule no longer covers (other device, other metric); a rule whose threshold,
        op, name or severity changed keeps its series and goes on from the current state.
        A dropped series that was firing resolves: ``resolved`` holds its alert (at
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
                and applies_to(rule, key[1])
                and (before is None or before.metric == rule.metric)
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
                        else:
                            why = f"rule changed: it no longer covers {key[1]} {before.metric}"
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
    def evaluate(self, reading: Reading) -> list[Alert]:
        """The transitions ``reading`` causes (none if it is not newer than the last reading
        evaluated for a series)."""
        out: list[Alert] = []
        position = (reading.ts, reading.id)
        for rule in self._by_metric.get(reading.metric, ()):
            if not applies_to(rule, reading.device):
                continue
            key = (rule.id, reading.device)
            prev = self._states.get(key)
            if prev is not None and position <= prev.position:
                continue
            firing = prev.firing if prev is not None else None
            if breaches(rule, reading.value):
                if firing is None:
                    firing = Episode(
                        alert_id_for(rule.id, reading.device, reading.id), reading.ts, reading.id
                    )
                    out.append(_alert(rule, reading, firing, "firing"))
            elif firing is not None:
                out.append(_alert(rule, reading, firing, "resolved"))
                firing = None
            self._states[key] = SeriesState(reading.ts, reading.id, firing, reading.value)
            self._dirty.add(key)
            self._removed.discard(key)
        return out

    # -- state ---------------------------------------------------------------------------
    def state(self, rule_id: str, device: str) -> SeriesState | None:
        return self._states.get((rule_id, device))

    @property
    def states(self) -> Mapping[SeriesKey, SeriesState]:
        return dict(self._states)

    def firing_count(self) -> int:
        return sum(1 for s in self._states.values() if s.firing is not None)

    def take_changes(self) -> StateChanges:
        """The series changed since the last call (to persist), and forget them."""
        changes = StateChanges({k: self._states[k] for k in self._dirty}, frozenset(self._removed))
        self._dirty.clear()
        self._removed.clear()
        return changes


def _alert(
    rule: Rule, reading: Reading, episode: Episode, state: Literal["firing", "resolved"]
) -> Alert:
    return Alert(
        alert_id=episode.alert_id,
        rule_id=rule.id,
        rule=rule.name or rule.id,
        device=reading.device,
        metric=rule.metric,
        value=reading.value,
        threshold=rule.threshold,
        op=rule.op,
        state=state,
        severity=rule.severity,
        started_at=episode.started_at,
        ts=reading.ts,
        resolved_at=reading.ts if state == "resolved" else None,
        reading_id=reading.id,
    )


def _resolution(rule: Rule, device: str, state: SeriesState, now_ms: int, reason: str) -> Alert:
    """The ``resolved`` alert of a firing series whose rule no longer covers it."""
    assert state.firing is not None
    return Alert(
        alert_id=state.firing.alert_id,
        rule_id=rule.id,
        rule=rule.name or rule.id,
        device=device,
        metric=rule.metric,
        value=state.last_value,
        threshold=rule.threshold,
        op=rule.op,
        state="resolved",
        severity=rule.severity,
        started_at=state.firing.started_at,
        ts=max(now_ms, state.last_ts),
        resolved_at=max(now_ms, state.last_ts),
        reading_id=None,
        reason=reason,
    )
