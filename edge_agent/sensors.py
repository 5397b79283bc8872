"""Simulated sensors: ``base + amplitude*sin(2*pi*t/period) + gaussian noise``. Pure.

The noise is drawn from a generator seeded with (seed, metric, time in ms), so a value is a
function of those alone: the same seed and times give the same readings in every run and
every process, whatever was sampled before.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from edge_agent.samples import Sample
from vigil.agent_settings import SensorSpec


def sensor_value(spec: SensorSpec, seed: int, ts_ms: int) -> float:
    """The value of ``spec`` at ``ts_ms`` (epoch milliseconds) for ``seed``."""
    t = ts_ms / 1000.0
    wave = spec.base + spec.amplitude * math.sin(2 * math.pi * t / spec.period_s)
    noise = random.Random(f"{seed}:{spec.metric}:{ts_ms}").gauss(0.0, spec.noise)
    return round(wave + noise, 6)


class SensorBank:
    """The device's simulated sensors, sampled together."""

    def __init__(self, specs: Sequence[SensorSpec], seed: int) -> None:
        self.specs = list(specs)
        self.seed = seed

    def sample(self, ts_ms: int) -> list[Sample]:
        return [
            Sample("sensor", s.metric, sensor_value(s, self.seed, ts_ms), s.unit)
            for s in self.specs
        ]
