"""A device's live configuration: what the API publishes, retained and versioned, on
``{root}/config/devices/{device}`` and the agent applies without a restart. Pure: no I/O.

Every field but ``device`` and ``version`` is optional: a field left out keeps what the
agent's own YAML says, so an empty (deleted) retained message brings the agent back to its
file. ``version`` only grows (the API seeds it from the clock); an agent ignores a version
it has already applied (the retained message comes again on every reconnect) and any older
one.
"""

from __future__ import annotations

import re

from pydantic import Field, ValidationError, field_validator, model_validator

from vigil.config_core import KeyedError, first_repeat
from vigil.jsonin import JsonInputError, loads
from vigil.messages import InvalidMessage
from vigil.names import is_name
from vigil.settings import Float, Int, Model, SensorSpec, validation_error
from vigil.text import shown

MAX_DEVICE_CONFIG_BYTES = 64 * 1024
MAX_SENSORS = 100
MAX_TICKERS = 100
MAX_VERSION = 2**53
#: What a ticker symbol may be (Yahoo's: letters, digits and ``. - ^ =``).
TICKER = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-^=]{0,19}")


class DeviceSettings(Model):
    """The part of a device's configuration that can change while it runs."""

    interval_s: Float | None = Field(None, ge=0.05, le=86_400, description="sampling interval")
    batch_max: Int | None = Field(None, ge=1, le=1000, description="readings per message at most")
    sensors: list[SensorSpec] | None = Field(None, max_length=MAX_SENSORS)
    tickers: list[str] | None = Field(None, max_length=MAX_TICKERS, description="share symbols")

    @field_validator("tickers")
    @classmethod
    def _tickers(cls, v: list[str] | None) -> list[str] | None:
        for i, symbol in enumerate(v or []):
            if not TICKER.fullmatch(symbol):
                raise KeyedError(
                    f"[{i}]", f"{shown(symbol)} is not a ticker symbol (letters, digits, . - ^ =)"
                )
        return v

    @model_validator(mode="after")
    def _whole(self) -> DeviceSettings:
        if self.sensors and (repeat := first_repeat(s.metric for s in self.sensors)):
            i, j = repeat
            raise KeyedError(f"sensors[{i}].metric", f"is also sensors[{j}].metric")
        if self.tickers and (repeat := first_repeat(s.upper() for s in self.tickers)):
            i, j = repeat
            raise KeyedError(f"tickers[{i}]", f"{shown(self.tickers[i])} is also tickers[{j}]")
        return self


class DeviceConfig(DeviceSettings):
    """One version of one device's live configuration, as published."""

    device: str
    version: Int = Field(ge=1, le=MAX_VERSION)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not is_name(v):
            raise ValueError(f"{shown(v)} is not a device name")
        return v

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @property
    def settings(self) -> DeviceSettings:
        return DeviceSettings(
            interval_s=self.interval_s,
            batch_max=self.batch_max,
            sensors=self.sensors,
            tickers=self.tickers,
        )


def decode_device_config(payload: bytes) -> DeviceConfig:
    """Parse a published configuration. Total: any bytes give a DeviceConfig or an
    InvalidMessage whose reason names the key."""
    try:
        obj = loads(payload, max_bytes=MAX_DEVICE_CONFIG_BYTES)
    except JsonInputError as exc:
        raise InvalidMessage(f"device config: {exc.reason}") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("device config must be a JSON object")
    try:
        return DeviceConfig.model_validate(obj)
    except ValidationError as exc:
        key, reason = validation_error(exc)
        raise InvalidMessage(f"device config: {key}: {reason}") from None
