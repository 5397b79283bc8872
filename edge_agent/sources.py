"""Sensor sources beside the simulated sensors (``sources:`` in the agent's file):

- ``host``: the Linux host the agent runs on, from /proc and /sys: ``cpu_percent`` (all CPUs,
  since the previous tick), ``memory_used_percent`` (MemTotal - MemAvailable),
  ``disk_used_percent`` per mount point (tag ``path``), ``thermal_celsius`` per thermal zone
  (tag ``zone``, the zone's type), ``load_1m``;
- ``command``: a command run each tick (argv, no shell, bounded in time) whose output gives
  numbers: ``name=value``, ``name: value`` or ``name value`` per line, or one bare number
  named by ``metric``;
- ``plugin``: the entry point ``plugin`` of group ``vigil.sources`` of an installed package,
  called with the source's ``options``; what it returns has ``sample(ts_ms)`` giving
  :class:`~edge_agent.samples.Sample` values (and may have ``close()``).

The parsers of what the host and commands say are pure and total: any text gives readings
and a list of what could not be read, never an exception. A source that fails (a command
that exits non-zero, a plugin that raises) gives no readings that tick; the agent counts it
(``vigil_source_errors_total{source}``) and logs when it starts failing and when it recovers.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_agent.samples import Sample
from vigil.agent_settings import CommandSourceSpec, HostSourceSpec, PluginSourceSpec
from vigil.names import is_name, is_tag_key

#: the entry point group plugins register their sources under
PLUGIN_GROUP = "vigil.sources"
#: a command's output beyond this is not read
MAX_OUTPUT = 64 * 1024
MAX_LINES = 200
MAX_TAG = 128
_SAFE_TAG = re.compile(r"[^A-Za-z0-9_.\-]")


class Source(Protocol):
    name: str

    def sample(self, ts_ms: int) -> list[Sample]: ...


class SourceError(Exception):
    """A source cannot be built (a plugin not installed, or failing to start)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


# -- pure parsers ------------------------------------------------------------------------
def parse_number(text: str) -> float | None:
    """A finite number, or None."""
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def parse_command_output(
    text: str, metric: str | None = None
) -> tuple[list[tuple[str, float]], list[str]]:
    """``(name, value)`` pairs in a command's output, and what could not be read."""
    pairs: list[tuple[str, float]] = []
    errors: list[str] = []
    seen: set[str] = set()
    lines = [line.strip() for line in text[:MAX_OUTPUT].splitlines() if line.strip()]
    if len(lines) > MAX_LINES:
        errors.append(f"{len(lines)} lines: only the first {MAX_LINES} are read")
        lines = lines[:MAX_LINES]

    def keep(n: int, name: str, value: float) -> None:
        if name in seen:
            errors.append(f"line {n}: {name} given twice")
        else:
            seen.add(name)
            pairs.append((name, value))

    for n, line in enumerate(lines, 1):
        bare = parse_number(line)
        if bare is not None:
            if metric is None:
                errors.append(f"line {n}: a bare number, but the source names no metric")
            else:
                keep(n, metric, bare)
            continue
        m = re.fullmatch(r"([^\s=:]+)\s*(?:=|:|\s)\s*(\S+)", line)
        if m is None:
            errors.append(f"line {n}: not 'name=value', 'name: value' or a number")
            continue
        name, raw = m.groups()
        value = parse_number(raw)
        if not is_name(name):
            errors.append(f"line {n}: {name[:40]!r} is not a valid metric name")
        elif value is None:
            errors.append(f"line {n}: {raw[:40]!r} is not a finite number")
        else:
            keep(n, name, value)
    return pairs, errors


@dataclass(frozen=True)
class CpuTimes:
    busy: int
    total: int


def parse_proc_stat(text: str) -> CpuTimes | None:
    """The all-CPU line of /proc/stat: busy and total jiffies (None if there is none)."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            try:
                values = [int(v) for v in parts[1:]]
            except ValueError:
                return None
            if len(values) < 4 or any(v < 0 for v in values):
                return None
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            # guest time is already counted in user and nice
            total = sum(values[:8])
            return CpuTimes(total - idle, total)
    return None


def cpu_percent(before: CpuTimes, after: CpuTimes) -> float | None:
    """Busy share of the time between two samples, in percent (None if no time passed)."""
    total = after.total - before.total
    busy = after.busy - before.busy
    if total <= 0 or busy < 0:
        return None
    return round(min(100.0, 100.0 * busy / total), 3)


def parse_meminfo(text: str) -> float | None:
    """Memory in use (MemTotal - MemAvailable) in percent of MemTotal."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    if not total or available is None or available > total:
        return None
    return round(100.0 * (total - available) / total, 3)


def parse_loadavg(text: str) -> float | None:
    parts = text.split()
    return parse_number(parts[0]) if parts else None


def parse_thermal(zone_type: str, temp: str) -> tuple[str, float] | None:
    """A thermal zone's tag value and its temperature in °C (the kernel says millidegrees)."""
    milli = parse_number(temp.strip())
    tag = _SAFE_TAG.sub("_", zone_type.strip())[:MAX_TAG] or "zone"
    if milli is None:
        return None
    return tag, round(milli / 1000.0, 3)


def tag_value(text: str) -> str:
    """``text`` as a tag value a reading may carry (printable, no backslash, not empty)."""
    cleaned = "".join(c for c in text if 32 <= ord(c) != 127 and c != "\\")[:MAX_TAG]
    return cleaned or "_"


# -- sources -----------------------------------------------------------------------------
class HostSource:
    def __init__(self, spec: HostSourceSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self._cpu: CpuTimes | None = None
        self.errors: list[str] = []

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text(errors="replace")
        except OSError as exc:
            self.errors.append(f"{path}: {exc.strerror or exc}")
            return None

    def sample(self, ts_ms: int) -> list[Sample]:
        self.errors = []
        out: list[Sample] = []
        want = set(self.spec.readings)
        proc, sys_root = self.spec.proc_root, self.spec.sys_root
        if "cpu" in want and (text := self._read(proc / "stat")) is not None:
            now = parse_proc_stat(text)
            if now is None:
                self.errors.append(f"{proc / 'stat'}: no cpu line")
            else:
                if self._cpu is not None and (pct := cpu_percent(self._cpu, now)) is not None:
                    out.append(Sample("sensor", "cpu_percent", pct, "%"))
                self._cpu = now
        if "memory" in want and (text := self._read(proc / "meminfo")) is not None:
            if (mem := parse_meminfo(text)) is not None:
                out.append(Sample("sensor", "memory_used_percent", mem, "%"))
            else:
                self.errors.append(f"{proc / 'meminfo'}: no MemTotal/MemAvailable")
        if (
            "load" in want
            and (text := self._read(proc / "loadavg")) is not None
            and (load := parse_loadavg(text)) is not None
        ):
            out.append(Sample("sensor", "load_1m", load, ""))
        if "disk" in want:
            for path in self.spec.disks:
                try:
                    st = os.statvfs(path)
                except OSError as exc:
                    self.errors.append(f"{path}: {exc.strerror or exc}")
                    continue
                total = st.f_blocks * st.f_frsize
                if total > 0:
                    used = 100.0 * (st.f_blocks - st.f_bfree) * st.f_frsize / total
                    tags = {"path": tag_value(path)}
                    out.append(Sample("sensor", "disk_used_percent", round(used, 3), "%", tags))
        if "thermal" in want:
            zones = sorted((sys_root / "class" / "thermal").glob("thermal_zone*"))
            seen: set[str] = set()
            for zone in zones:
                kind, temp = self._read(zone / "type"), self._read(zone / "temp")
                got = parse_thermal(kind or zone.name, temp) if temp is not None else None
                if got is None:
                    continue
                tag, celsius = got
                if tag in seen:  # two zones of one type: tell them apart by the zone
                    tag = tag_value(f"{tag}_{zone.name}")
                seen.add(tag)
                out.append(Sample("sensor", "thermal_celsius", celsius, "C", {"zone": tag}))
        return out


class CommandSource:
    def __init__(self, spec: CommandSourceSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self.errors: list[str] = []

    def sample(self, ts_ms: int) -> list[Sample]:
        self.errors = []
        try:
            done = subprocess.run(  # argv from the device's own file
                self.spec.command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.spec.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.errors.append(f"no answer within {self.spec.timeout_s:g}s")
            return []
        except OSError as exc:
            self.errors.append(f"cannot run {self.spec.command[0]}: {exc.strerror or exc}")
            return []
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip().splitlines()
            self.errors.append(
                f"exit status {done.returncode}" + (f": {err[0][:200]}" if err else "")
            )
            return []
        pairs, errors = parse_command_output(
            done.stdout[:MAX_OUTPUT].decode("utf-8", "replace"), self.spec.metric
        )
        self.errors = errors
        return [Sample("sensor", name, value, self.spec.unit) for name, value in pairs]


@dataclass
class PluginSource:
    name: str
    impl: Any
    errors: list[str] = field(default_factory=list)

    def sample(self, ts_ms: int) -> list[Sample]:
        self.errors = []
        try:
            got = list(self.impl.sample(ts_ms))
        except Exception as exc:  # a plugin's failure is that source's, not the agent's
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return []
        out = []
        for item in got:
            if (
                isinstance(item, Sample)
                and is_name(item.metric)
                and isinstance(item.value, int | float)
                and math.isfinite(item.value)
                and all(is_tag_key(k) and isinstance(v, str) for k, v in item.tags.items())
            ):
                out.append(item)
            else:
                self.errors.append(f"not a valid Sample: {item!r}"[:300])
        return out


def load_plugin(spec: PluginSourceSpec, key: str) -> PluginSource:
    from importlib.metadata import entry_points  # noqa: PLC0415 - only when plugins are used

    found = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    ep = found.get(spec.plugin)
    if ep is None:
        installed = ", ".join(sorted(found)) or "none"
        raise SourceError(
            f"{key}.plugin",
            f"no plugin {spec.plugin!r} in entry point group {PLUGIN_GROUP} (installed: "
            f"{installed})",
        )
    try:
        impl = ep.load()(dict(spec.options))
    except Exception as exc:
        raise SourceError(f"{key}.plugin", f"{spec.plugin} failed to start: {exc}") from exc
    if not callable(getattr(impl, "sample", None)):
        raise SourceError(f"{key}.plugin", f"{spec.plugin} gave an object without sample()")
    return PluginSource(spec.name, impl)


def build_sources(
    specs: Iterable[HostSourceSpec | CommandSourceSpec | PluginSourceSpec],
) -> list[HostSource | CommandSource | PluginSource]:
    """The sources of ``sources:``; SourceError names the key of one that cannot start."""
    out: list[HostSource | CommandSource | PluginSource] = []
    for i, spec in enumerate(specs):
        if isinstance(spec, HostSourceSpec):
            out.append(HostSource(spec))
        elif isinstance(spec, CommandSourceSpec):
            out.append(CommandSource(spec))
        else:
            out.append(load_plugin(spec, f"sources[{i}]"))
    return out
