"""A device's live configuration: what the API publishes, retained and versioned, on
``{root}/config/devices/{device}`` and the agent applies without a restart. Pure: no I/O.

Every field but ``device`` and ``version`` is optional: a field left out keeps what the
agent's own YAML says, so an empty (deleted) retained message brings the agent back to its
file. ``version`` only grows (the API seeds it from the clock); an agent ignores a version
it has already applied (the retained message comes again on every reconnect) and any older
one.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from vigil.agent_settings import SensorSpec, Spec, convert
from vigil.config_core import KeyedError, first_repeat
from vigil.jsonin import JsonInputError, loads
from vigil.messages import InvalidMessage
from vigil.names import is_name
from vigil.symbols import SYMBOL_RULE, is_symbol
from vigil.text import shown

MAX_DEVICE_CONFIG_BYTES = 64 * 1024
MAX_SENSORS = 100
MAX_TICKERS = 100
MAX_VERSION = 2**53


class DeviceSettings(Spec, omit_defaults=True, frozen=True, kw_only=True):
    """The part of a device's configuration that can change while it runs."""

    interval_s: (
        Annotated[float, Meta(ge=0.05, le=86_400, description="sampling interval")] | None
    ) = None
    batch_max: (
        Annotated[int, Meta(ge=1, le=1000, description="readings per message at most")] | None
    ) = None
    sensors: Annotated[list[SensorSpec], Meta(max_length=MAX_SENSORS)] | None = None
    tickers: (
        Annotated[list[str], Meta(max_length=MAX_TICKERS, description="share symbols")] | None
    ) = None

    def _check(self) -> None:
        for i, symbol in enumerate(self.tickers or []):
            if not is_symbol(symbol):
                raise KeyedError(
                    f"tickers[{i}]", f"{shown(symbol)} is not a ticker symbol ({SYMBOL_RULE})"
                )
        if self.sensors and (repeat := first_repeat(s.metric for s in self.sensors)):
            i, j = repeat
            raise KeyedError(f"sensors[{i}].metric", f"is also sensors[{j}].metric")
        if self.tickers and (repeat := first_repeat(s.upper() for s in self.tickers)):
            i, j = repeat
            raise KeyedError(f"tickers[{i}]", f"{shown(self.tickers[i])} is also tickers[{j}]")

    def to_json(self) -> bytes:
        """JSON of the settings given (the ones left out are left out)."""
        return msgspec.json.encode(self)

    def given(self) -> dict[str, Any]:
        """The settings given, by name."""
        return {k: v for k in self.__struct_fields__ if (v := getattr(self, k)) is not None}


class DeviceConfig(DeviceSettings, frozen=True, kw_only=True):
    """One version of one device's live configuration, as published."""

    device: str
    version: Annotated[int, Meta(ge=1, le=MAX_VERSION)]

    def _check(self) -> None:
        if not is_name(self.device):
            raise KeyedError("device", f"{shown(self.device)} is not a device name")
        super()._check()

    def encode(self) -> bytes:
        return self.to_json()

    @property
    def settings(self) -> DeviceSettings:
        return DeviceSettings(
            interval_s=self.interval_s,
            batch_max=self.batch_max,
            sensors=self.sensors,
            tickers=self.tickers,
        )


def decode_device_settings(obj: Any) -> DeviceSettings:
    """Validate parsed JSON as DeviceSettings. Raises KeyedError (key, reason)."""
    return convert(DeviceSettings, obj)


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
        return convert(DeviceConfig, obj)
    except KeyedError as exc:
        raise InvalidMessage(f"device config: {exc.key}: {exc.reason}") from None
