"""Extra InfluxDB servers that ``vigil run`` starts and supervises on request, so a server
can join the cluster while the stack runs (``vigil storage add NAME --local``).

The request is ``<state>/storage/local-servers.json`` (``{"servers": [{"name", "port"}]}``,
written atomically by the command); the launcher, which checks it every half second, starts
each new server like the configured ones (its own data folder, provisioned at every start)
and then writes ``<state>/storage/local/<name>.ready`` (atomically, with the URL): the
signal the command waits on before it joins the server to the layout. The launcher starts
the requested servers again when it restarts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from vigil.atomic import write_atomic
from vigil.jsonin import JsonInputError, loads
from vigil.names import is_name

REQUESTS = Path("storage") / "local-servers.json"
READY = Path("storage") / "local"


@dataclass(frozen=True, slots=True)
class LocalServer:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def requested(state: Path) -> list[LocalServer]:
    """The servers asked for; a file that does not parse asks for nothing (and is logged by
    the caller through the empty answer)."""
    try:
        doc = loads((state / REQUESTS).read_bytes(), max_bytes=1024 * 1024)
    except (OSError, JsonInputError):
        return []
    out = []
    for entry in doc.get("servers", []) if isinstance(doc, dict) else []:
        if not isinstance(entry, dict):
            continue
        name, port = entry.get("name"), entry.get("port")
        if isinstance(name, str) and is_name(name) and isinstance(port, int) and 0 < port < 65536:
            out.append(LocalServer(name, port))
    return out


def request(state: Path, server: LocalServer) -> None:
    """Ask the launcher for ``server`` (idempotent)."""
    servers = [s for s in requested(state) if s.name != server.name] + [server]
    doc = {"servers": [{"name": s.name, "port": s.port} for s in servers]}
    write_atomic(state / REQUESTS, json.dumps(doc, indent=2) + "\n", mode=0o644)


def forget(state: Path, name: str) -> None:
    """No longer ask for ``name`` (after it left the layout); the launcher stops it."""
    servers = [s for s in requested(state) if s.name != name]
    doc = {"servers": [{"name": s.name, "port": s.port} for s in servers]}
    write_atomic(state / REQUESTS, json.dumps(doc, indent=2) + "\n", mode=0o644)
    (state / READY / f"{name}.ready").unlink(missing_ok=True)


def mark_ready(state: Path, server: LocalServer) -> None:
    write_atomic(state / READY / f"{server.name}.ready", json.dumps({"url": server.url}) + "\n")


def wait_ready(state: Path, name: str, timeout_s: float) -> str | None:
    """The URL of ``name`` once the launcher says it runs, None after ``timeout_s``."""
    path = state / READY / f"{name}.ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            doc = loads(path.read_bytes(), max_bytes=4096)
            if isinstance(doc, dict) and isinstance(doc.get("url"), str):
                return str(doc["url"])
        except (OSError, JsonInputError):
            pass
        time.sleep(0.2)
    return None
