"""Keeps the broker's retained rule-set snapshot (``{root}/config/rules``) equal to the
rules in the API database, so the alert engine picks up changes without a restart.

One thread, ``rules-publisher``, does all publishing:

- it publishes the current snapshot (QoS 1, retained) whenever it is asked to (after a rule
  change, :meth:`RulePublisher.push`) or the connection (re)opens (startup included);
- it never has two snapshots in flight: a snapshot still unacknowledged when the connection
  dropped is re-sent by paho on reconnect, and the next one is published only after that
  one's PUBACK, so the broker always ends up retaining the newest rule set;
- while the broker is unreachable nothing is queued: the rule is already saved, and the
  snapshot is read from the database when the connection comes back;
- a stored row that is no longer a valid rule (saved by an older version) is left out of
  the snapshot, with one warning per row naming it, so the other rules still reach the
  alert engine; ``GET /rules`` lists it as invalid until it is deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from paho.mqtt.enums import MQTTErrorCode

from api.db import InvalidStoredRule, RuleSnapshot
from vigil.messages import Rule, encode_channels, encode_rules
from vigil.metrics import ServiceMetrics
from vigil.mqtt import MqttClient
from vigil.names import ADMIN_USER

log = logging.getLogger(__name__)

#: A consistent read of the rule set.
SnapshotReader = Callable[[], RuleSnapshot]
#: What is published of a snapshot.
SnapshotEncoder = Callable[[RuleSnapshot], bytes]


def rule_set_payload(snap: RuleSnapshot) -> bytes:
    """The rule-set snapshot: each rule with its owner (the engine stamps it on the alerts,
    the notifier routes by it), the recipients and the silences."""
    owned: dict[str, set[str]] = {}
    for device, owner in snap.device_owners.items():
        owned.setdefault(owner, set()).add(device)

    def scoped(rule: Rule) -> Rule:
        owner = snap.owners.get(rule.id, ADMIN_USER)
        # a user's rule watches only the user's devices; the admin's, every device
        scope = None if owner in snap.admins else frozenset(owned.get(owner, ()))
        return replace(rule, owner=owner, scope=scope)

    rules = [scoped(r) for r in snap.rules]
    return encode_rules(rules, snap.version, snap.changed_at, snap.recipients, snap.silences)


def channel_set_payload(snap: RuleSnapshot) -> bytes:
    """The channel snapshot: the webhooks with their secrets and the Telegram chats (for the
    notifier only)."""
    return encode_channels(snap.version, snap.webhooks, snap.telegram, snap.templates)


@dataclass(frozen=True, slots=True)
class _InFlight:
    mid: int
    version: int


class RulePublisher:
    def __init__(
        self,
        mqtt: MqttClient,
        topic: str,
        read_snapshot: SnapshotReader,
        metrics: ServiceMetrics | None = None,
        *,
        encode: SnapshotEncoder = rule_set_payload,
        what: str = "rule set",
    ) -> None:
        self.mqtt = mqtt
        self.topic = topic
        self.what = what
        self._encode = encode
        self._read_snapshot = read_snapshot
        self._metrics = metrics
        self._cond = threading.Condition()
        self._wanted = False
        self._stopping = False
        self._acked: set[int] = set()
        self._inflight: _InFlight | None = None
        self._published_version: int | None = None
        self._warned: set[InvalidStoredRule] = set()
        self._unpublished = (
            metrics.gauge(
                f"vigil_api_{'rules' if what == 'rule set' else what}_unpublished",
                f"1 while the broker lacks the API's latest {what}",
            ).labels(metrics.service)
            if metrics
            else None
        )
        self._thread = threading.Thread(
            target=self._run, name=f"{what.replace(' ', '-')}-publisher", daemon=True
        )
        mqtt.on_connected.append(self._on_connected)
        mqtt.on_disconnected.append(self._on_disconnected)
        mqtt.on_published.append(self._on_published)

    # -- public ---------------------------------------------------------------------------
    @property
    def published_version(self) -> int | None:
        """The newest rule-set version the broker acknowledged since this process started."""
        with self._cond:
            return self._published_version

    def start(self) -> None:
        self._thread.start()
        if self.mqtt.connected:
            self.request()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(5)

    def request(self) -> None:
        """Ask for the current snapshot to be published (does not wait)."""
        with self._cond:
            self._wanted = True
            self._set_gauge(True)
            self._cond.notify_all()

    def push(self, version: int, timeout: float) -> bool:
        """Publish the rule set (at least ``version``) and wait for the broker's PUBACK.

        Returns False at once when the broker is unreachable (the snapshot goes out when the
        connection comes back), or after ``timeout`` seconds without an acknowledgement.
        """
        self.request()
        with self._cond:
            self._cond.wait_for(
                lambda: self._acked_at_least(version) or not self.mqtt.connected or self._stopping,
                timeout,
            )
            return self._acked_at_least(version)

    # -- paho callbacks (paho's thread: never block, never publish here) -------------------
    def _on_connected(self, _session_present: bool) -> None:
        self.request()

    def _on_disconnected(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_published(self, mid: int) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    # -- the publishing thread ------------------------------------------------------------
    def _acked_at_least(self, version: int) -> bool:
        return self._published_version is not None and self._published_version >= version

    def _set_gauge(self, pending: bool) -> None:
        if self._unpublished is not None:
            self._unpublished.set(1 if pending else 0)

    def _can_publish(self) -> bool:
        return self._wanted and self._inflight is None and self.mqtt.connected

    def _ack_arrived(self) -> bool:
        return self._inflight is not None and self._inflight.mid in self._acked

    def _run(self) -> None:
        while True:
            with self._cond:
                # Every state change notifies; the timeout only bounds a missed wake-up.
                while not (self._stopping or self._ack_arrived() or self._can_publish()):
                    self._cond.wait(1.0)
                if self._stopping:
                    return
                if self._inflight is not None and self._ack_arrived():
                    self._acked.discard(self._inflight.mid)
                    version = self._inflight.version
                    self._inflight = None
                    if self._published_version is None or version > self._published_version:
                        self._published_version = version
                    log.info("broker has %s version %d on %s", self.what, version, self.topic)
                    self._cond.notify_all()
                    if not self._wanted:
                        self._set_gauge(False)
                    continue
                self._wanted = False
            self._publish_snapshot()

    def _warn_invalid(self, invalid: list[InvalidStoredRule]) -> None:
        """One warning (and one error count) per invalid stored row, not one per snapshot."""
        for bad in invalid:
            if bad in self._warned:
                continue
            self._warned.add(bad)
            log.warning(
                "stored rule %r is not a valid rule (%s): it is left out of the rule set "
                "until DELETE /rules/<id> removes it",
                bad.id,
                bad.reason,
            )
            if self._metrics:
                self._metrics.error("rules_invalid_stored")

    def _publish_snapshot(self) -> None:
        try:
            snap = self._read_snapshot()
        except Exception:
            log.exception(
                "cannot read the rule set to publish; will retry on the next change or reconnect"
            )
            if self._metrics:
                self._metrics.error("rules_read")
            return
        if self._encode is rule_set_payload:
            self._warn_invalid(snap.invalid)
        version = snap.version
        payload = self._encode(snap)
        # Not holding the condition: paho calls on_published under its own lock.
        info = self.mqtt.publish(self.topic, payload, qos=1, retain=True)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error(
                "cannot publish %s version %d to %s: rc %s", self.what, version, self.topic, info.rc
            )
            if self._metrics:
                self._metrics.error("rules_publish")
            return
        with self._cond:
            # NO_CONN: paho keeps the message and sends it on reconnect; wait for its ack.
            self._inflight = _InFlight(info.mid, version)
            self._acked &= {info.mid}  # forget acks of anything else published on this client
            self._cond.notify_all()
