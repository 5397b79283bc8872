"""A local SMTP server that keeps every email it receives as a file (``.eml``).

``vigil-mailsink --dir .vigil/mail --port 2525``: the local stack's stand-in for a mail
server, and the SMTP server the tests talk to (aiosmtpd).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger(__name__)


@dataclass
class MailSink:
    """aiosmtpd handler: writes each message to ``folder`` and keeps it in ``messages``."""

    folder: Path
    messages: list[Message] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if isinstance(envelope.content, bytes) and not raw:
            raw = envelope.content
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{next(self._seq):05d}.eml"
        tmp = self.folder / (name + ".tmp")
        tmp.write_bytes(raw)
        tmp.replace(self.folder / name)
        msg = message_from_bytes(raw)
        self.messages.append(msg)
        log.info(
            "mail to %s saved as %s: %s", ",".join(envelope.rcpt_tos), name, msg.get("Subject", "")
        )
        return "250 Message accepted for delivery"


def start_mailsink(
    folder: Path, host: str = "127.0.0.1", port: int = 2525
) -> tuple[Controller, MailSink]:
    handler = MailSink(folder)
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    return controller, handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vigil-mailsink", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(".vigil/mail"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2525)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mailsink %(message)s")
    controller, _ = start_mailsink(args.dir, args.host, args.port)
    log.info("SMTP on %s:%d, saving mail to %s", args.host, args.port, args.dir)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
