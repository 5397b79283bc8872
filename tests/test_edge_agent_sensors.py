"""Simulated sensors are a pure function of their spec, the seed and the time."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.sensors import SensorBank, sensor_value
from vigil.agent_settings import SensorSpec

SPECS = [
    SensorSpec(metric="temperature", unit="C", base=20, amplitude=4, period_s=120, noise=0.3),
    SensorSpec(metric="humidity", unit="%", base=45, amplitude=10, period_s=300, noise=1),
]
TIMES = [1_700_000_000_000 + 500 * i for i in range(20)]


def test_same_seed_and_times_give_the_same_readings_in_any_order():
    a = [SensorBank(SPECS, seed=1).sample(t) for t in TIMES]
    bank = SensorBank(SPECS, seed=1)
    b = [bank.sample(t) for t in reversed(TIMES)][::-1]
    assert a == b
    other = [SensorBank(SPECS, seed=2).sample(t) for t in TIMES]
    assert other != a


def test_samples_carry_kind_metric_and_unit():
    got = SensorBank(SPECS, seed=1).sample(TIMES[0])
    assert [(s.kind, s.metric, s.unit, dict(s.tags)) for s in got] == [
        ("sensor", "temperature", "C", {}),
        ("sensor", "humidity", "%", {}),
    ]


def test_without_noise_the_value_is_the_sine_wave():
    spec = SensorSpec(metric="x", base=10, amplitude=2, period_s=100, noise=0)
    assert sensor_value(spec, 0, 25_000) == 12.0  # a quarter period: the crest
    assert sensor_value(spec, 0, 75_000) == 8.0


@given(st.integers(1_000_000_000_000, 4_000_000_000_000), st.integers(0, 2**32))
def test_values_stay_near_the_wave(ts_ms, seed):
    spec = SPECS[0]
    value = sensor_value(spec, seed, ts_ms)
    assert math.isfinite(value)
    assert abs(value - spec.base) <= spec.amplitude + 8 * spec.noise
