"""Turn a batch of received MQTT messages into work (pure): readings to store, dead letters
to publish, duplicates to drop. The service then does the I/O and acknowledges every message
of the batch only when its readings are stored and its dead letters published."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from ingest_service.dedupe import RecentIds
from vigil.consumer import Received
from vigil.contain import Failed, contain
from vigil.deadletter import DeadLetter
from vigil.messages import Reading, parse_readings
from vigil.topics import Topics


def dead_letter(msg: Received, reason: str, reading_id: int | None = None) -> DeadLetter:
    return DeadLetter(msg.topic, msg.payload, msg.received_at, reason, reading_id)


@dataclass
class Prepared:
    #: new readings per message index, in message order (a message may carry several)
    readings: list[tuple[int, list[Reading]]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0
    #: (device, id) of the readings dropped as already stored: confirmed again to the device
    already: list[tuple[str, int]] = field(default_factory=list)

    @property
    def all_readings(self) -> list[Reading]:
        return [r for _, rs in self.readings for r in rs]


def confirmations(work: Prepared, topics: Topics) -> dict[str, list[int]]:
    """Per device, the ids to confirm once the batch is durable: the readings stored, those
    already stored before (a redelivery or a re-send), and those refused for good (their dead
    letter holds them); re-sending any of these would change nothing."""
    out: dict[str, list[int]] = {}
    for r in work.all_readings:
        out.setdefault(r.device, []).append(r.id)
    for device, rid in work.already:
        out.setdefault(device, []).append(rid)
    for d in work.dead:
        of = topics.device_of(d.topic)
        if d.reading_id is not None and of is not None:
            out.setdefault(of, []).append(d.reading_id)
    return out


def prepare(
    batch: list[Received],
    topics: Topics,
    recent: RecentIds,
    quote_agents: Collection[str] = frozenset(),
) -> Prepared:
    """Validate each message and drop readings already stored (``recent``) or already seen
    earlier in this batch. A message that breaks the contract (a quote from a device not in
    ``quote_agents`` among others), or whose parsing raises anything at all, becomes a dead
    letter with the reason."""
    out = Prepared()
    in_batch: set[tuple[str, int]] = set()
    for index, msg in enumerate(batch):
        device = topics.device_of(msg.topic)
        if device is None:
            out.dead.append(dead_letter(msg, f"topic {msg.topic[:200]!r} names no valid device"))
            continue
        parsed = contain(
            lambda: parse_readings(msg.payload, device, quote_agents),  # noqa: B023 - at once
            what="validating the reading",
            subject=msg.topic,
        )
        if isinstance(parsed, Failed):
            out.dead.append(dead_letter(msg, parsed.reason))
            continue
        readings = parsed
        fresh = []
        for r in readings:
            key = (r.device, r.id)
            if key in in_batch or key in recent:
                out.duplicates += 1
                if key not in in_batch:
                    out.already.append(key)
                continue
            in_batch.add(key)
            fresh.append(r)
        if fresh:
            out.readings.append((index, fresh))
    return out
