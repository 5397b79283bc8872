"""HTTP client for one InfluxDB server, speaking the 1.x API (``/ping``, ``/write``,
``/query``), which InfluxDB 1.x serves natively and 2.x/3.x serve for compatibility.

Errors are typed: :class:`FatalStorageError` only when the server says the data or query
itself is wrong (HTTP 400, 413): retrying cannot help. Everything else is
:class:`RetriableStorageError` (server down, timeout, 5xx, and 4xx that mean the server is
not ready for us, such as a missing database or refused credentials): nothing is given up on
because of a server's state. :class:`DatabaseNotFound` says which.

HTTP is urllib3's thread-safe connection pool, used directly: ingest writes a batch to each
replica from several threads, and requests' per-call session merging (environment proxies,
hooks, cookies) cost more CPU than everything else in a write of a small batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import HTTPError


class StorageError(Exception):
    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node
        self.reason = message


class RetriableStorageError(StorageError):
    """Try again: the server is down, slow, or not ready for us."""


class FatalStorageError(StorageError):
    """The server says the content is wrong: retrying cannot help."""


class DatabaseNotFound(RetriableStorageError):
    """The server is up but lacks the database (replaced, restored, or dropped)."""


def _json_int(text: str) -> int | float:
    return -0.0 if text == "-0" else int(text)  # the server writes the float -0.0 as -0


#: HTTP statuses that mean the request's content is wrong
BAD_CONTENT = (400, 413)


#: connections kept per server (more may open while busy; they are closed after use)
POOL_SIZE = 10
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _error_text(resp: urllib3.BaseHTTPResponse) -> str:
    """InfluxDB's ``{"error": "..."}`` message, or the start of the body."""
    text = resp.data.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:500]
    return text[:300]


class InfluxNode:
    """One InfluxDB server: ``name`` on the ring, ``url`` of its HTTP API."""

    def __init__(
        self,
        name: str,
        url: str,
        timeout_s: float = 10.0,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        """An https ``url`` is verified (chain and host name) against ``ca_file``, or the
        system's CAs when it is None."""
        self.name = name
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.username = username
        self._headers: dict[str, str] = {}
        if username is not None:  # HTTP Basic, as InfluxDB 1.x takes
            self._headers.update(urllib3.make_headers(basic_auth=f"{username}:{password or ''}"))
        tls: dict[str, str] = {}
        if self.url.startswith("https:"):
            tls = {"cert_reqs": "CERT_REQUIRED"}
            if ca_file is not None:
                tls["ca_certs"] = str(ca_file)
        self.ca_file = ca_file
        self._pool = urllib3.connection_from_url(
            self.url, maxsize=POOL_SIZE, block=False, retries=False, **tls
        )

    def close(self) -> None:
        self._pool.close()

    def __repr__(self) -> str:
        return f"InfluxNode({self.name!r}, {self.url!r})"

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        form: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """One request: ``params`` in the query string, ``body`` as is or ``form`` encoded;
        ``timeout`` (default the node's) for connecting and for each read."""
        t = timeout or self.timeout_s
        headers = self._headers
        if form is not None:
            body, headers = urlencode(form).encode(), {**headers, **FORM}
        try:
            resp = self._pool.urlopen(
                method,
                path + ("?" + urlencode(params) if params else ""),
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=t, read=t),
                retries=False,
                redirect=False,
            )
        except (HTTPError, OSError) as exc:
            raise RetriableStorageError(self.name, f"{type(exc).__name__}: {exc}") from exc
        if resp.status < 400:
            return resp
        detail = f"HTTP {resp.status}: {_error_text(resp)}"
        if resp.status == 404 and b"database not found" in resp.data:
            raise DatabaseNotFound(self.name, detail)
        if resp.status in BAD_CONTENT:
            raise FatalStorageError(self.name, detail)
        raise RetriableStorageError(self.name, detail)

    def ping(self, timeout_s: float | None = None) -> bool:
        try:
            return self._request("GET", "/ping", timeout=timeout_s).status == 204
        except StorageError:
            return False

    def create_database(self, database: str) -> None:
        self.query(f"CREATE DATABASE {database}", database=None, method="POST")

    def write(self, database: str, lines: list[str]) -> None:
        """Write line-protocol lines with nanosecond timestamps in one request."""
        if lines:
            self._request(
                "POST",
                "/write",
                params={"db": database, "precision": "ns"},
                body="\n".join(lines).encode("utf-8"),
            )

    def query_statements(
        self, q: str, database: str | None, *, timeout_s: float | None = None
    ) -> list[dict[str, Any]]:
        """Run every statement of ``q`` (InfluxQL the caller rendered and escaped); each
        statement's result ``{"series": [...]}`` or ``{"error": "..."}``, times in ns. A
        cut answer (the server's max-row-limit) is an error, never taken for the whole."""
        args = {"q": q, "epoch": "ns", **({"db": database} if database else {})}
        resp = self._request("POST", "/query", form=args, timeout=timeout_s)
        try:
            results = list(json.loads(resp.data, parse_int=_json_int).get("results") or [])
            out = [
                {"error": str(r["error"])}
                if "error" in r
                else {"series": list(r.get("series") or [])}
                for r in results
            ]
        except (ValueError, AttributeError, TypeError) as exc:
            raise RetriableStorageError(self.name, f"unreadable query answer: {exc}") from None
        if any(r.get("partial") for r in results):
            raise RetriableStorageError(self.name, f"the server cut the answer short: {q[:200]}")
        return out

    def query(
        self,
        q: str,
        database: str | None,
        params: dict[str, Any] | None = None,
        method: str = "GET",
        *,
        epoch: str = "ms",
        timeout_s: float | None = None,
    ) -> list[dict[str, Any]]:
        """Run InfluxQL; ``params`` are bound as ``$name`` (never pasted into the text).

        Returns the series of the first statement, each ``{"name", "tags", "columns",
        "values"}``, with times in epoch ``epoch`` units (``ms`` or ``ns``).
        """
        args: dict[str, str] = {"q": q, "epoch": epoch}
        if database:
            args["db"] = database
        if params:
            args["params"] = json.dumps(params)
        if method == "GET":
            resp = self._request("GET", "/query", params=args, timeout=timeout_s)
        else:
            resp = self._request("POST", "/query", form=args, timeout=timeout_s)
        try:
            body = json.loads(resp.data, parse_int=_json_int)
            first = (body.get("results") or [{}])[0]
            series = list(first.get("series", []))
            partial = bool(first.get("partial")) or any(s.get("partial") for s in series)
        except (ValueError, AttributeError, TypeError, IndexError) as exc:
            raise RetriableStorageError(self.name, f"unreadable query answer: {exc}") from None
        if "error" in first:
            error = str(first["error"])
            if error.startswith("database not found"):
                raise DatabaseNotFound(self.name, error)
            raise FatalStorageError(self.name, f"query error: {error}")
        if partial:  # the server's max-row-limit: never take a cut answer for the whole
            raise RetriableStorageError(self.name, f"the server cut the answer short: {q[:200]}")
        return series
