"""Sending one email with aiosmtplib, with the outcome told apart by type.

``SendError.permanent`` is True for a 5xx answer (a refused sender, recipient or login: a
configuration problem rather than an outage): the notifier records it as failed and goes
on; anything else it retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage

import aiosmtplib

from vigil.config_core import read_secret
from vigil.settings import SmtpSettings


class SendError(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason, self.permanent = reason, permanent


class Mailer:
    """Delivers to one SMTP server, as configured in ``notifier.smtp``."""

    def __init__(self, smtp: SmtpSettings) -> None:
        self.smtp = smtp
        self._password = read_secret(smtp.password_file)  # read once: fail at start

    @property
    def server(self) -> str:
        return f"{self.smtp.host}:{self.smtp.port}"

    async def send(self, message: EmailMessage, recipients: Sequence[str]) -> list[str]:
        """Send; returns the recipients the server refused while it accepted others.
        Raises SendError if nothing was accepted."""
        username = self.smtp.username or None
        password = (self._password or "") if username else None
        try:
            refused, _ = await aiosmtplib.send(
                message,
                sender=self.smtp.sender,
                recipients=list(recipients),
                hostname=self.smtp.host,
                port=self.smtp.port,
                use_tls=self.smtp.use_tls,
                start_tls=self.smtp.starttls,
                timeout=self.smtp.timeout_s,
                username=username,
                password=password,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise SendError(
                "all recipients refused: "
                + "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients),
                permanent=all(500 <= c < 600 for c in codes),
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise SendError(f"{exc.code} {exc.message}", permanent=500 <= exc.code < 600) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendError(str(exc) or type(exc).__name__, permanent=False) from exc
        return sorted(refused)
