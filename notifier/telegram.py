"""Sending one notification to a Telegram chat with the Bot API's ``sendMessage``, the
outcome told apart by type. ``notifier.telegram.base_url`` points elsewhere than
``https://api.telegram.org`` for tests and offline demos (a local stand-in).

``{"ok": true}`` delivers it. 429, 5xx and connection failures are an outage: retried.
Another answer (``{"ok": false, "error_code": 400, "description": "Bad Request: chat not
found"}``, a 401 for a wrong token) is permanent: ``SendError.permanent``.
"""

from __future__ import annotations

import json

import urllib3

from notifier.mailer import SendError
from vigil.settings import TelegramSettings

MAX_TEXT = 4096


class TelegramSender:
    def __init__(self, settings: TelegramSettings) -> None:
        self.settings = settings
        self._token = settings.bot_token  # read once: fail at start
        self._pool = urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(total=settings.timeout_s), maxsize=2
        )

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    @property
    def server(self) -> str:
        return self.settings.base_url

    def send(self, chat_id: str, text: str) -> None:
        """``sendMessage`` (blocking: run it in a thread); raises SendError unless ok."""
        url = f"{self.settings.base_url}/bot{self._token}/sendMessage"
        body = json.dumps(
            {"chat_id": chat_id, "text": text[:MAX_TEXT], "disable_web_page_preview": True}
        ).encode()
        where = f"sendMessage to chat {chat_id}"
        try:
            resp = self._pool.request(
                "POST",
                url,
                body=body,
                headers={"Content-Type": "application/json"},
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            # the URL holds the token: name the server only
            raise SendError(
                f"{where} via {self.server}: {type(exc).__name__}", permanent=False
            ) from exc
        try:
            answer = json.loads(resp.data or b"{}")
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if resp.status == 200 and answer.get("ok") is True:
            return
        description = str(answer.get("description", ""))[:200] or resp.reason or ""
        reason = f"{where} answered {resp.status}: {description}".rstrip(": ")
        raise SendError(reason, permanent=not (resp.status >= 500 or resp.status == 429))

    def close(self) -> None:
        self._pool.clear()
