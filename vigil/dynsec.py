"""Mosquitto's dynamic-security plugin, as Vigil uses it: the store of device credentials
that changes while the broker runs. Pure: no I/O.

Devices authenticate against the plugin; services against the password file. The plugin's
clients have no roles: their ACL checks fall through (default access is deny, which the
plugin reports as "defer") to the ACL file, whose ``%u`` patterns confine every device to its
own subtrees. What the plugin adds is life: a client created, disabled or deleted over
``$CONTROL/dynamic-security/v1`` takes effect at once, and disabling or deleting one
disconnects it (Mosquitto kicks every connection of that username).

- :func:`config_with_devices`: the plugin's JSON file, as provisioning seeds it before the
  broker starts: the configured devices are present, with their passwords, bound to their
  client ids; devices added later (and the disabled flags) are kept.
- :func:`command` / :func:`parse_responses`: the control topic's request and response.
- :func:`render_owners`: the live owners file of Vigil's client-id plugin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
#: Mosquitto 2.0's password hashing for the plugin: PBKDF2-HMAC-SHA512, 12-byte salt.
SALT_BYTES = 12
ITERATIONS = 101
#: No fall-through grants: every check the plugin does not decide goes to the ACL file.
DEFAULT_ACL_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


class DynsecError(Exception):
    """A malformed plugin file or response."""


def password_hash(password: str, salt: bytes, iterations: int = ITERATIONS) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)


def client_entry(username: str, password: str, *, salt: bytes | None = None) -> dict[str, Any]:
    """A client of the plugin's file: ``username`` with ``password``, bound to client id
    ``username`` (the plugin refuses it any other id)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    return {
        "username": username,
        "clientid": username,
        "password": base64.b64encode(password_hash(password, salt)).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": ITERATIONS,
        "roles": [],
    }


def verifies(entry: Mapping[str, Any], password: str) -> bool:
    """Whether ``entry`` (a client of the plugin's file) holds ``password``'s hash."""
    try:
        salt = base64.b64decode(entry["salt"], validate=True)
        expected = base64.b64decode(entry["password"], validate=True)
        iterations = int(entry["iterations"])
    except (KeyError, TypeError, ValueError):
        return False
    if iterations < 1:
        return False
    return hmac.compare_digest(password_hash(password, salt, iterations), expected)


def config_with_devices(
    existing: Mapping[str, Any] | None, devices: Mapping[str, str]
) -> dict[str, Any]:
    """The plugin's file with every device of ``devices`` (id -> password) present.

    A configured device keeps its entry (and its disabled flag) if the password still
    verifies; otherwise it gets a fresh hash. Clients not in ``devices`` (added through the
    API) are kept as they are. Raises DynsecError for an ``existing`` that is not the
    plugin's format."""
    base: dict[str, Any] = dict(existing or {})
    clients = base.get("clients", [])
    if not isinstance(clients, list) or not all(
        isinstance(c, dict) and isinstance(c.get("username"), str) for c in clients
    ):
        raise DynsecError("'clients' must be a list of objects with a username")
    by_name = {c["username"]: c for c in clients}
    for name, password in sorted(devices.items()):
        old = by_name.get(name)
        if old is not None and verifies(old, password) and old.get("clientid") == name:
            continue
        entry = client_entry(name, password)
        if old is not None and old.get("disabled") is True:
            entry["disabled"] = True
        by_name[name] = entry
    base["defaultACLAccess"] = dict(DEFAULT_ACL_ACCESS)
    base["clients"] = [by_name[n] for n in sorted(by_name)]
    base.setdefault("groups", [])
    base.setdefault("roles", [])
    return base


def client_names(config: Mapping[str, Any]) -> list[str]:
    """The usernames in the plugin's file."""
    clients = config.get("clients", [])
    if not isinstance(clients, list):
        return []
    return sorted(
        c["username"] for c in clients if isinstance(c, dict) and isinstance(c.get("username"), str)
    )


# -- the control topic ------------------------------------------------------------------
def command(name: str, correlation: str, **params: Any) -> dict[str, Any]:
    """One command of a control request (``createClient``, ``disableClient``...)."""
    return {"command": name, "correlationData": correlation, **params}


def request(commands: Iterable[Mapping[str, Any]]) -> bytes:
    return json.dumps({"commands": list(commands)}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Response:
    command: str
    correlation: str
    error: str | None  # None: done
    data: Mapping[str, Any]


def parse_responses(payload: bytes) -> list[Response]:
    """The responses in a message of the response topic. Total: a payload that is not one
    raises DynsecError, any other bytes give responses."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DynsecError(f"response is not JSON: {exc}") from None
    items = obj.get("responses") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        raise DynsecError("response has no 'responses' list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("command"), str):
            raise DynsecError("a response is not an object with a command")
        error = item.get("error")
        data = item.get("data")
        out.append(
            Response(
                item["command"],
                str(item.get("correlationData", "")),
                None if error is None else str(error),
                data if isinstance(data, dict) else {},
            )
        )
    return out


def render_owners(devices: Iterable[str]) -> str:
    """The live owners file of Vigil's client-id plugin: each device owns its id."""
    lines = [
        "# Written by Vigil's API: devices added while the broker runs, <client id> <username>.",
        "# The broker's vigil_clientid plugin re-reads it when it changes.",
    ]
    for name in sorted(set(devices)):
        if not name or name.startswith("#") or any(c.isspace() for c in name):
            raise ValueError(f"{name!r} cannot be a client id in the owners file")
        lines.append(f"{name} {name}")
    return "\n".join(lines) + "\n"
