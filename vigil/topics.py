"""The MQTT topic tree, general to specific, one subtree per purpose.

    {root}/data/{device}                 readings (one or a batch), device -> ingest, alert engine
    {root}/status/{device}               retained device status; the last will sets it offline
    {root}/config/devices/{device}       retained device configuration, api -> device
    {root}/config/rules                  retained rule set snapshot, api -> alert engine
    {root}/config/channels               retained channel snapshot (secrets), api -> notifier
    {root}/alerts/{device}/{rule_id}     alert transitions, alert engine -> notifier, users
    {root}/firing/{device}/{rule_id}     retained: the alert firing now (cleared on resolve)
    {root}/deadletter/{device}           rejected messages with the reason, ingest -> users
    {root}/ack/{device}                  storage confirmations (id ranges), ingest -> device
    {root}/events/{device}               pipeline events about a device (gaps), api -> users
    {root}/notifications/{owner}/{id}    retained delivery records, notifier -> api

The device identity is always the third level, so broker ACLs written with ``%u``
confine a device to its own subtrees. Everything here is pure and tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from vigil.names import check_name, is_name

DEFAULT_ROOT = "vigil"


DATA = "data"
STATUS = "status"
CONFIG = "config"
ALERTS = "alerts"
FIRING = "firing"
DEADLETTER = "deadletter"
ACK = "ack"
EVENTS = "events"
NOTIFICATIONS = "notifications"

#: Placeholder device level for a dead letter whose topic names no valid device.
UNKNOWN_DEVICE = "_unknown"


class TopicError(ValueError):
    """A topic or topic level that does not fit the tree."""


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds and parses the topics under one root (``vigil`` unless configured)."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not isinstance(self.root, str) or not all(
            is_name(level) for level in self.root.split("/")
        ):
            raise TopicError(
                f"invalid topic root {self.root!r}: one or more levels separated by /, "
                "each a name (1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
            )

    # -- builders ---------------------------------------------------------------------
    def data(self, device: str) -> str:
        return f"{self.root}/{DATA}/{check_name(device, 'device id')}"

    def status(self, device: str) -> str:
        return f"{self.root}/{STATUS}/{check_name(device, 'device id')}"

    def device_config(self, device: str) -> str:
        return f"{self.root}/{CONFIG}/devices/{check_name(device, 'device id')}"

    @property
    def rules(self) -> str:
        return f"{self.root}/{CONFIG}/rules"

    @property
    def channels(self) -> str:
        """The retained channel snapshot (webhooks with their secrets): notifier only."""
        return f"{self.root}/{CONFIG}/channels"

    def alert(self, device: str, rule_id: str) -> str:
        return (
            f"{self.root}/{ALERTS}/{check_name(device, 'device id')}/"
            f"{check_name(rule_id, 'rule id')}"
        )

    def firing(self, device: str, rule_id: str) -> str:
        """Where the alert firing now for ``rule_id`` on ``device`` is retained."""
        return (
            f"{self.root}/{FIRING}/{check_name(device, 'device id')}/"
            f"{check_name(rule_id, 'rule id')}"
        )

    def deadletter(self, device: str | None) -> str:
        level = device if is_name(device) else UNKNOWN_DEVICE
        return f"{self.root}/{DEADLETTER}/{level}"

    def ack(self, device: str) -> str:
        return f"{self.root}/{ACK}/{check_name(device, 'device id')}"

    def events(self, device: str) -> str:
        return f"{self.root}/{EVENTS}/{check_name(device, 'device id')}"

    def notification(self, owner: str, notification_id: str) -> str:
        """Where the notifier retains a delivery record of ``owner``'s."""
        return (
            f"{self.root}/{NOTIFICATIONS}/{check_name(owner, 'user name')}/"
            f"{check_name(notification_id, 'notification id')}"
        )

    # -- subscription filters ---------------------------------------------------------
    @property
    def data_filter(self) -> str:
        """Every device's readings (``#`` also matches the parent level)."""
        return f"{self.root}/{DATA}/+/#"

    @property
    def status_filter(self) -> str:
        return f"{self.root}/{STATUS}/+"

    @property
    def alerts_filter(self) -> str:
        return f"{self.root}/{ALERTS}/#"

    @property
    def firing_filter(self) -> str:
        return f"{self.root}/{FIRING}/#"

    @property
    def notifications_filter(self) -> str:
        return f"{self.root}/{NOTIFICATIONS}/#"

    @property
    def deadletter_filter(self) -> str:
        return f"{self.root}/{DEADLETTER}/#"

    # -- parsing ----------------------------------------------------------------------
    def pair_under(self, topic: str, subtree: str) -> tuple[str, str] | None:
        """``(a, b)`` of ``{root}/{subtree}/{a}/{b}`` when both are valid names, else None
        (the retained per-alert and per-notification topics)."""
        prefix = f"{self.root}/{subtree}/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 2 or not all(is_name(p) for p in parts):
            return None
        return parts[0], parts[1]

    def device_of(self, topic: str, subtree: str = DATA) -> str | None:
        """The device level of ``topic`` in ``subtree``, or None if the topic is not there
        or names no valid device."""
        parts = topic.split("/")
        root_parts = self.root.split("/")
        n = len(root_parts)
        if parts[:n] != root_parts or len(parts) < n + 2 or parts[n] != subtree:
            return None
        device = parts[n + 1]
        return device if is_name(device) else None
