"""The parts of configuration loading that need no schema library: the errors (file, key,
reason), the bounded YAML reader, environment overrides, secret files, and the checks of
names, hosts and paths that every model applies. The cloud's models (``vigil.settings``,
pydantic) build on it; so can a device's, which must stay small (docs/agent.md, Memory).

Pure but for reading the files it is given."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from vigil.names import NAME_RULE, is_name
from vigil.symbols import QUOTE_DEVICE_PREFIX, is_quote_device
from vigil.text import shown

_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.\-]{0,251}[A-Za-z0-9_.])?")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")


ENV_PREFIX = "VIGIL__"
AGENT_ENV_PREFIX = "VIGIL_AGENT__"

#: Bounds on a configuration file: its size, how deep it nests and how many values it holds
#: once aliases are expanded (a "billion laughs" file is refused, not expanded).
MAX_CONFIG_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 50_000
#: A secret file is a password or a digest: anything larger is not one.
MAX_SECRET_BYTES = 64 * 1024

#: The broker user (and client id) of each cloud service, by its section in vigil.yaml.
SERVICE_USERS: Mapping[str, str] = {
    "ingest": "vigil-ingest",
    "alert_engine": "vigil-alert-engine",
    "notifier": "vigil-notifier",
    "api": "vigil-api",
}
#: The read-only broker user handed out for watching.
VIEWER_USER = "vigil-viewer"
#: Most ingest processes on one shared subscription (each has its own broker user)
MAX_INGEST_MEMBERS = 8
#: Each member's metrics port is ``ingest.metrics_port`` + this x (member - 1)
MEMBER_PORT_STEP = 100


def ingest_member_user(member: int) -> str:
    """The broker user (and client id) of ingest process ``member`` (1-based) when
    ``ingest.members`` > 1."""
    return f"{SERVICE_USERS['ingest']}-{member}"


INGEST_MEMBER_USERS = tuple(ingest_member_user(n) for n in range(1, MAX_INGEST_MEMBERS + 1))
#: Broker user names that belong to Vigil itself: no device may take one. The broker's
#: provisioning (``broker/provision.py`` SERVICE_ACCESS) grants exactly these users.
RESERVED_USERS = frozenset({*SERVICE_USERS.values(), *INGEST_MEMBER_USERS, VIEWER_USER})


#: The cloud services, by section name, in the order they are checked.
SERVICES = tuple(SERVICE_USERS)


class BrokerAddress(Protocol):
    """Where an MQTT client connects: the cloud's pydantic ``BrokerSettings`` and the agent's
    msgspec one both fit, so the MQTT clients import neither."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def keepalive_s(self) -> int: ...
    @property
    def ca_file(self) -> Path | None:
        """Set: connect over TLS, verifying the broker against this CA."""
        ...


class MqttIdentity(Protocol):
    """Who an MQTT client connects as (cloud and agent settings alike)."""

    @property
    def client_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str | None: ...


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file, key and reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")
        self.path, self.key, self.reason = path, key, reason


class KeyedError(ValueError):
    """Raised by a cross-field rule: ``key`` (relative to the model that checks it) is the
    setting to change, ``reason`` why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def first_repeat(values: Iterable[Hashable]) -> tuple[int, int] | None:
    """(index, index of the earlier equal value) of the first value seen twice, or None."""
    seen: dict[Hashable, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            return i, seen[value]
        seen[value] = i
    return None


def check_name(value: str) -> str:
    if not is_name(value):
        raise ValueError(f"{shown(value)} is not a valid name: {NAME_RULE}")
    return value


def check_device_id(value: str) -> str:
    check_name(value)
    if value in RESERVED_USERS:
        raise ValueError(f"{value!r} is reserved for Vigil's own broker users")
    if is_quote_device(value):
        raise ValueError(
            f"{value!r}: ids starting with {QUOTE_DEVICE_PREFIX!r} are reserved for the "
            "share symbols' quotes"
        )
    return value


def check_host(value: str) -> str:
    """A host name or an IP address (no port, no spaces)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if _HOSTNAME.fullmatch(value) is None or ".." in value:
            raise ValueError(f"{shown(value)} is not a host name or IP address") from None
    return value


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``, maybe bracketed) is this machine only."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_file_path(value: Path) -> Path:
    text = str(value)
    try:
        os.fsencode(text)  # a lone surrogate (YAML's "\ud800") names no file
    except UnicodeEncodeError:
        text = ""
    if not text or text == "." or "\x00" in text:
        raise ValueError(f"{shown(str(value))} is not a file path")
    return value


def read_secret(path: Path | None) -> str | None:
    """The stripped content of a secret file, or None when no file is configured."""
    if path is None:
        return None
    return path.read_text(encoding="utf-8").strip()


def check_unit(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or "\\" in value:
        raise ValueError("a unit may not hold control characters or a backslash")
    return value


# -- secret files ------------------------------------------------------------------------
#: "certificate": not secret, but read at start the same way (a CA file)
SecretKind = Literal["password", "sha256", "certificate"]


@dataclass(frozen=True)
class SecretFile:
    """A secret file a service reads at start: the key naming it, and what it must hold."""

    key: str
    path: Path
    kind: SecretKind = "password"


def secret_problem(secret: SecretFile) -> str | None:
    """Why ``secret`` cannot be used (unreadable, not UTF-8, empty, not a digest), or None."""
    path = secret.path
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if len(raw) > MAX_SECRET_BYTES:
        return f"{path} is larger than {MAX_SECRET_BYTES // 1024} KiB: not a secret"
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text"
    if secret.kind == "sha256":
        if _HEX64.fullmatch(text.lower()) is None:
            return f"{path} must hold a SHA-256 hex digest (64 hex characters)"
    elif secret.kind == "certificate":
        if "-----BEGIN CERTIFICATE-----" not in text:
            return f"{path} holds no PEM certificate"
    elif not text:
        return f"{path} is empty"
    return None


def _unreadable(exc: Exception, node: Node) -> ConstructorError:
    problem = f"cannot read this value ({type(exc).__name__}: {str(exc)[:80]})"
    return ConstructorError(None, None, problem, node.start_mark)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: nesting at most MAX_DEPTH, and any value it cannot
    construct (a bad timestamp, ``!!int x``) reported as a YAML error at its position."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH or self._nodes > MAX_NODES:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                problem = (
                    f"nested deeper than {MAX_DEPTH} levels"
                    if self._depth > MAX_DEPTH
                    else f"holds more than {MAX_NODES} values"
                )
                raise ComposerError(None, None, problem, mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # a constructor fed a value it cannot take
            raise _unreadable(exc, node) from exc


def _measure(root: Node) -> None:
    """Refuse a node graph that, with aliases expanded, holds more than MAX_NODES values,
    nests deeper than MAX_DEPTH, or contains itself."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height)
    active: set[int] = set()

    def visit(node: Node, level: int) -> tuple[int, int]:
        key = id(node)
        if key in active:
            raise ComposerError(
                None, None, "an alias refers to a value that holds it", node.start_mark
            )
        if level > MAX_DEPTH:
            raise ComposerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels (aliases expanded)",
                node.start_mark,
            )
        if key not in done:
            active.add(key)
            children: list[Node] = []
            if isinstance(node, SequenceNode):
                children = list(node.value)
            elif isinstance(node, MappingNode):
                children = [part for pair in node.value for part in pair]
            size, height = 1, 1
            for child in children:
                s, h = visit(child, level + 1)
                size, height = size + s, max(height, h + 1)
                if size > MAX_NODES:
                    raise ComposerError(
                        None,
                        None,
                        f"holds more than {MAX_NODES} values once aliases are expanded",
                        node.start_mark,
                    )
            active.discard(key)
            done[key] = (size, height)
        size, height = done[key]
        if level + height - 1 > MAX_DEPTH:
            raise ComposerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels (aliases expanded)",
                node.start_mark,
            )
        return size, height

    visit(root, 1)


def _yaml_error(exc: yaml.YAMLError, text: str) -> tuple[str, str]:
    """(where, reason) of a YAML error: ``line L, column C`` and what is wrong there."""
    if isinstance(exc, yaml.reader.ReaderError):
        pos = max(0, min(exc.position, len(text)))
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else 0
        return (
            f"line {line}, column {column}",
            f"invalid YAML: character U+{char:04X} is not allowed",
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(top level)"
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    problem = "; ".join(p for p in parts if p) or str(exc)
    return where, f"invalid YAML: {problem}"


def parse_yaml(text: str) -> Any:
    """One YAML document with the safe loader, within the bounds above. Raises
    yaml.YAMLError (with a position) for anything it cannot or will not read."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # a constructor fed a value it cannot take
            raise _unreadable(exc, node) from exc
    finally:
        loader.dispose()


def _key_text(part: int | str) -> str:
    return str(part) if _PLAIN_KEY.fullmatch(str(part)) else shown(part, 40)


def key_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{_key_text(part)}" if out else _key_text(part)
    return out


def _plain(value: Any, loc: list[int | str], spath: str) -> Any:
    """A copy of parsed YAML with no shared parts (so an override changes one place only),
    every mapping key checked to be a string."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                where = key_path(loc) or "(top level)"
                raise ConfigError(spath, where, f"key {shown(k, 40)} is not a string")
            out[k] = _plain(v, [*loc, k], spath)
        return out
    if isinstance(value, list):
        return [_plain(v, [*loc, i], spath) for i, v in enumerate(value)]
    return value


def _env_value(raw: str) -> Any:
    """An override's value: a YAML scalar (or flow collection) when it parses as one, else
    the text itself."""
    if not raw:
        return raw
    try:
        return _plain(parse_yaml(raw), [], "")
    except (yaml.YAMLError, ConfigError):
        return raw


def apply_env_overrides(
    data: dict[str, Any],
    environ: Mapping[str, str],
    prefix: str = ENV_PREFIX,
    path: str = "<environment>",
) -> list[str]:
    """Apply ``VIGIL__A__B=value`` overrides to ``data`` in place; returns the keys set
    (``a.b``, ``a.list[0]``). Raises ConfigError naming ``path`` and the variable for an
    override that names no key."""
    applied = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix) or len(name) == len(prefix):
            continue
        keys = [k.lower() for k in name[len(prefix) :].split("__")]
        if not all(keys):
            raise ConfigError(path, name, "environment override with an empty key (a stray __)")
        node: Any = data
        shown: list[int | str] = []
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            value = _env_value(raw) if last else None
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(
                        path,
                        key_path(shown) or name,
                        f"{name}: {key!r} is not an index of this list of {len(node)}",
                    )
                index = int(key)
                shown.append(index)
                if last:
                    node[index] = value
                elif not isinstance(node[index], dict | list):
                    node[index] = {}
                node = node[index]
            else:
                shown.append(key)
                if last:
                    node[key] = value
                elif not isinstance(node.get(key), dict | list):
                    node[key] = {}
                node = node[key]
        applied.append(key_path(shown))
    return applied


def read_config_data(
    path: str | Path, environ: Mapping[str, str] | None = None, prefix: str = ENV_PREFIX
) -> dict[str, Any]:
    """The mapping a configuration file holds, environment overrides applied, ready to be
    validated. Raises ConfigError("<file>: <key>: <reason>") for anything the file may hold."""
    spath = str(path)
    try:
        with Path(path).open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(spath, "", f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            spath, "(top level)", f"larger than {MAX_CONFIG_BYTES // 1024} KiB: not a configuration"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            spath, f"line {line}, column {column}", f"not UTF-8 text (byte 0x{raw[exc.start]:02x})"
        ) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        where, reason = _yaml_error(exc, text)
        raise ConfigError(spath, where, reason) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            spath, "(top level)", f"must be a mapping of keys to values, not {type(data).__name__}"
        )
    plain: dict[str, Any] = _plain(data, [], spath)
    apply_env_overrides(plain, os.environ if environ is None else environ, prefix, path=spath)
    return plain
