"""HTTPS in front of a WSGI server that speaks plain HTTP (waitress has no TLS).

A :class:`TlsFront` listens on ``host:port`` with a server certificate, completes each TLS
handshake (10 s at most) and pipes the connection's bytes to a Unix socket the plain server
listens on (mode 0600, in a private folder), both ways, until either side closes. Streams
(server-sent events) pass through as they are written. Nothing listens in the clear on the
network: the plain server has no TCP port at all.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from pathlib import Path

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # the plain side learns the client is done sending
    except (ConnectionError, OSError, ssl.SSLError):
        pass


class TlsFront:
    """Start with :meth:`start` (binds, or raises OSError); :meth:`stop` closes it."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, upstream: Path) -> None:
        self.host, self.port = host, port
        self._context = context
        self._upstream = upstream
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self._upstream))
        except OSError as exc:
            log.warning("https %s:%d: the server behind is unreachable: %s", *self._at(), exc)
            writer.close()
            return
        to_server = asyncio.create_task(_pipe(reader, up_writer))
        try:
            await _pipe(up_reader, writer)  # until the server closes the connection
        finally:
            to_server.cancel()
            for w in (up_writer, writer):
                w.close()

    def _at(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> None:
        async def bind() -> asyncio.Server:
            return await asyncio.start_server(
                self._handle,
                self.host,
                self.port,
                ssl=self._context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
            )

        self._server = self._loop.run_until_complete(bind())
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tls-{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        server = self._server

        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
