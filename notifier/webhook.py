"""Posting one notification to a webhook: JSON, signed, with the outcome told apart by type.

The body is the notification (its id, owner, group, the transitions it carries and the
group's other alerts still firing). Headers:

- ``X-Vigil-Delivery``: the notification id, the same on every retry (receivers dedupe on it);
- ``X-Vigil-Timestamp``: seconds since the epoch when this attempt was signed;
- ``X-Vigil-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed by the webhook's secret,
  of ``"{timestamp}.{body}"``, so a receiver can check it came from Vigil and is recent.

A 2xx answer delivers it. 408, 425, 429, 5xx and connection failures are an outage: retried.
Any other answer (a 4xx, a redirect) is permanent: ``SendError.permanent``. Loopback, private
and link-local addresses are refused unless ``notifier.webhooks.allow_private_networks``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import urllib3

from notifier.mailer import SendError
from vigil.messages import Alert, Webhook
from vigil.settings import WebhookSettings

TRANSIENT = frozenset({408, 425, 429})
USER_AGENT = "vigil-notifier"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def body_of(
    *,
    notification_id: str,
    owner: str,
    group: str,
    repeat: bool,
    alerts: Sequence[Alert],
    firing: Sequence[Alert],
    webhook: str,
) -> bytes:
    obj: dict[str, Any] = {
        "id": notification_id,
        "owner": owner,
        "webhook": webhook,
        "group": group,
        "repeat": repeat,
        "alerts": [a.to_dict() for a in alerts],
        "firing": [a.to_dict() for a in firing],
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def private_address(host: str) -> str | None:
    """The first loopback, private, link-local or otherwise non-global address ``host``
    resolves to, or None."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return None  # the connection attempt reports it
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return str(address)
    return None


class WebhookSender:
    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._pool = urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(total=settings.timeout_s), maxsize=4
        )

    def post(self, hook: Webhook, body: bytes, delivery_id: str, timestamp: int) -> None:
        """POST ``body`` (blocking: run it in a thread); raises SendError unless a 2xx."""
        host = urlsplit(hook.url).hostname or ""
        if not self.settings.allow_private_networks:
            address = private_address(host)
            if address is not None:
                raise SendError(
                    f"{host} is {address}, not a public address (allow it with "
                    "notifier.webhooks.allow_private_networks)",
                    permanent=True,
                )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Vigil-Delivery": delivery_id,
            "X-Vigil-Timestamp": str(timestamp),
            "X-Vigil-Signature": sign(hook.secret, timestamp, body),
        }
        try:
            resp = self._pool.request(
                "POST", hook.url, body=body, headers=headers, redirect=False, preload_content=True
            )
        except urllib3.exceptions.HTTPError as exc:
            raise SendError(f"POST {hook.url}: {exc}", permanent=False) from exc
        status = resp.status
        if 200 <= status < 300:
            return
        text = resp.data[:200].decode("utf-8", "replace").strip()
        reason = f"POST {hook.url} answered {status}" + (f": {text}" if text else "")
        raise SendError(reason, permanent=not (status >= 500 or status in TRANSIENT))

    def close(self) -> None:
        self._pool.clear()
