"""Alert transitions -> notifications, pure (Alertmanager's model, no I/O, no clock).

Each owner's alerts fall into groups by the values of ``group_by`` (by default the rule).
A group's transitions go out together:

- a new group's first notification waits ``group_wait`` for more alerts to join it;
- after that, the group's next changes wait until ``group_interval`` after its last
  notification, and go out together;
- while some of its alerts still fire and nothing changed, the group is notified again every
  ``repeat_interval`` (0: never), listing what still fires;
- a notification carries each alert transition once (*changes*: an alert newly firing, or
  resolved, including one that fired and resolved before its group was first notified);
  the alerts still firing that did not change are context, not part of it.

Muted alerts (a silence matches, or the device is offline: see :data:`Muter`) are left out of
notifications and recorded as suppressed, once per transition. An alert that was notified
firing is notified when it resolves, even if muted by then: a resolution closes what the
owner was told. An alert muted while it fired and unmuted while it still fires is a change
again: it goes out with the group's next notification.

A member leaves its group once its resolution went out (or was suppressed); an empty group is
dropped, so the next alert of that group waits ``group_wait`` again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vigil.messages import Alert

#: why an alert is muted at a time (epoch ms), or None: it is not
Muter = Callable[[Alert, int], str | None]


def never_muted(_alert: Alert, _now: int) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Timing:
    """A grouping policy, in milliseconds."""

    group_by: tuple[str, ...] = ("rule_id",)
    group_wait_ms: int = 10_000
    group_interval_ms: int = 60_000
    repeat_interval_ms: int = 14_400_000  # 0: never repeat

    @classmethod
    def of(
        cls,
        group_by: Iterable[str],
        group_wait_s: float,
        group_interval_s: float,
        repeat_interval_s: float,
    ) -> Timing:
        return cls(
            tuple(group_by),
            round(group_wait_s * 1000),
            round(group_interval_s * 1000),
            round(repeat_interval_s * 1000),
        )


def label(alert: Alert, name: str) -> str:
    value = getattr(alert, name)
    return "" if value is None else str(value)


def group_key(alert: Alert, group_by: Iterable[str]) -> str:
    """``rule_id=high-temp`` (labels joined by ``,``; ``""`` with no labels: one group)."""
    return ",".join(f"{name}={label(alert, name)}" for name in group_by)


@dataclass(slots=True)
class Member:
    """An alert episode in its group: its latest transition, the state last notified and the
    state last recorded as suppressed."""

    alert: Alert
    notified: str | None = None
    suppressed: str | None = None


@dataclass(slots=True)
class Group:
    owner: str
    key: str
    members: dict[str, Member] = field(default_factory=dict)
    #: when its first change arrived while it had never been notified (epoch ms)
    pending_since: int | None = None
    #: when it was last notified (epoch ms)
    last_sent: int | None = None

    def add(self, alert: Alert, now: int) -> bool:
        """Take a transition; False if it changes nothing (its episode already resolved)."""
        member = self.members.get(alert.alert_id)
        if member is None:
            self.members[alert.alert_id] = Member(alert)
        elif member.alert.state in ("resolved", alert.state):
            return False
        else:
            member.alert = alert
        if self.pending_since is None and self.last_sent is None:
            self.pending_since = now
        return True


@dataclass(frozen=True, slots=True)
class Flush:
    """What one group's turn produces: a notification (``alerts``, the transitions it
    carries, with ``firing`` the group's other alerts still firing, as context), and the
    transitions suppressed, each with the reason."""

    owner: str
    key: str
    alerts: tuple[Alert, ...]
    firing: tuple[Alert, ...]
    suppressed: tuple[tuple[Alert, str], ...]
    repeat: bool = False


def _muted(member: Member, muted: Muter, now: int) -> str | None:
    if member.alert.state == "resolved" and member.notified == "firing":
        return None  # the owner was told it fired: tell them it resolved
    return muted(member.alert, now)


def due(group: Group, timing: Timing, now: int, muted: Muter = never_muted) -> Flush | None:
    """What ``group`` sends (or suppresses) at ``now``; None: nothing yet."""
    changes: list[Alert] = []
    steady: list[Alert] = []
    suppressed: list[tuple[Alert, str]] = []
    for member in group.members.values():
        alert = member.alert
        reason = _muted(member, muted, now)
        if reason is not None:
            if alert.state not in (member.suppressed, member.notified):
                suppressed.append((alert, reason))
        elif alert.state != member.notified:
            changes.append(alert)
        elif alert.state == "firing":
            steady.append(alert)
    if changes:
        if group.last_sent is None:
            start = group.pending_since if group.pending_since is not None else now
            ready = now >= start + timing.group_wait_ms
        else:
            ready = now >= group.last_sent + timing.group_interval_ms
        if ready:
            return Flush(group.owner, group.key, tuple(changes), tuple(steady), tuple(suppressed))
    elif (
        steady
        and timing.repeat_interval_ms > 0
        and group.last_sent is not None
        and now >= group.last_sent + timing.repeat_interval_ms
    ):
        return Flush(group.owner, group.key, tuple(steady), (), tuple(suppressed), repeat=True)
    if suppressed:
        return Flush(group.owner, group.key, (), (), tuple(suppressed))
    return None


def apply(group: Group, flush: Flush, now: int) -> bool:
    """Record ``flush`` as done in ``group``; True if the group is now empty (drop it)."""
    for alert in flush.alerts:
        group.members[alert.alert_id].notified = alert.state
    for alert, _reason in flush.suppressed:
        group.members[alert.alert_id].suppressed = alert.state
    if flush.alerts:
        group.last_sent = now
        group.pending_since = None
    for alert_id, member in list(group.members.items()):
        if member.alert.state == "resolved" and "resolved" in (member.notified, member.suppressed):
            del group.members[alert_id]
    return not group.members
