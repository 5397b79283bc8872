"""A measurement as a sensor or the quote feed produces it: no id, no time yet.

The outbox gives it both when it commits it, turning it into a :class:`vigil.messages.Reading`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vigil.messages import Kind


@dataclass(frozen=True, slots=True)
class Sample:
    kind: Kind
    metric: str
    value: float
    unit: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
