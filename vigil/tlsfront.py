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
from asyncio import FIRST_COMPLETED
from pathlib import Path

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
#: after the client stopped sending (a half-close, or gone), how long its answer may take
DRAIN_TIMEOUT_S = 5.0
#: a client that sends nothing this long is let go (waitress's own channel_timeout)
CLIENT_IDLE_S = 120.0
CHUNK = 64 * 1024


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle_s: float | None = None
) -> bool:
    """Copy until EOF (True), an error on either side or ``idle_s`` without a byte (False).
    EOF is not passed on: waitress drops an answer it has not sent yet when it reads one."""
    try:
        while data := await asyncio.wait_for(reader.read(CHUNK), idle_s):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError, TimeoutError):
        return False
    return True


class TlsFront:
    """Start with :meth:`start` (binds, or raises OSError); :meth:`stop` closes it and every
    connection it holds."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, upstream: Path) -> None:
        self.host, self.port = host, port
        self._context = context
        self._upstream = upstream
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        up_writer = None
        try:
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(str(self._upstream))
            except OSError as exc:
                log.warning("https %s:%d: the server behind is unreachable: %s", *self._at(), exc)
                return
            self._open.add(up_writer)
            if writer.transport.is_closing():  # gone during the handshake
                return
            # As waitress's channel_timeout: a client silent this long is gone.
            to_server = asyncio.create_task(_pipe(reader, up_writer, CLIENT_IDLE_S))
            to_client = asyncio.create_task(_pipe(up_reader, writer))
            done, _ = await asyncio.wait({to_server, to_client}, return_when=FIRST_COMPLETED)
            if to_server in done and to_client not in done and to_server.result():
                # the client is done sending: its answer may still be on the way
                await asyncio.wait({to_client}, timeout=DRAIN_TIMEOUT_S)
            for task in (to_server, to_client):
                task.cancel()
        finally:
            for w in (up_writer, writer):
                if w is not None:
                    self._open.discard(w)
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
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the one it got
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tls-{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None

        async def close() -> None:
            server.close()
            for w in list(self._open):
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        thread.join(10)
        self._loop.close()
