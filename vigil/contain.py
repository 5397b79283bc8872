"""One message's failure stays that message's: the containment policy every consumer shares.

A consumer hands each message's work to :func:`contain` (or :func:`contain_async`). The
work returns its value, or the message is *failed*: :class:`Failed` carries the reason to
put on the dead-letter topic, and the consumer dead-letters the message, acknowledges it and
goes on. That holds for a contract violation (:class:`~vigil.messages.InvalidMessage`) and
for any other exception the content provoked (``RecursionError``, ``OverflowError``, a
``ValueError`` from deep inside a library...): no payload can stop a service.

Failures of the service's own dependencies are not the message's fault. The consumer names
them in ``passthrough`` (storage unreachable, the broker gone, the disk failing:
``OSError``, ``sqlite3.Error``...) and they propagate, so the service retries them or exits
crash-only and the message stays unacknowledged for the restarted process.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from vigil.messages import InvalidMessage
from vigil.text import cut

log = logging.getLogger(__name__)

T = TypeVar("T")
Errors = tuple[type[BaseException], ...]

#: Longest reason put on the dead-letter topic.
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Failed:
    """The message could not be processed; ``reason`` is for the dead-letter topic."""

    reason: str
    #: True when an exception (not a contract check) failed it: a defect worth a look.
    unexpected: bool = False


def failure(exc: Exception, what: str) -> Failed:
    """The :class:`Failed` for ``exc`` raised while doing ``what`` to one message."""
    if isinstance(exc, InvalidMessage):
        return Failed(cut(exc.reason, MAX_REASON))
    detail = str(exc) or "(no message)"
    return Failed(
        cut(f"{what} failed: {type(exc).__name__}: {detail}", MAX_REASON), unexpected=True
    )


_logged: set[tuple[str, str]] = set()


def _log_unexpected(exc: Exception, what: str, subject: str) -> None:
    key = (what, type(exc).__name__)
    if key in _logged:  # once per kind: a flood of one bad payload must not flood the log
        log.debug("%s failed on a message on %s: %s: %s", what, subject, type(exc).__name__, exc)
        return
    _logged.add(key)
    log.error("%s failed on a message on %s; dead-lettering it", what, subject, exc_info=exc)


def _failed(exc: Exception, what: str, subject: str, passthrough: Errors) -> Failed:
    if isinstance(exc, passthrough):
        raise exc
    result = failure(exc, what)
    if result.unexpected:
        _log_unexpected(exc, what, subject)
    return result


def contain(
    work: Callable[[], T], *, what: str, subject: str = "?", passthrough: Errors = ()
) -> T | Failed:
    """``work()``, or Failed if it raised anything but one of ``passthrough``."""
    try:
        return work()
    except Exception as exc:  # the point: nothing a message does escapes
        return _failed(exc, what, subject, passthrough)


async def contain_async(
    work: Callable[[], Awaitable[T]], *, what: str, subject: str = "?", passthrough: Errors = ()
) -> T | Failed:
    """:func:`contain` for a coroutine function."""
    try:
        return await work()
    except Exception as exc:
        return _failed(exc, what, subject, passthrough)
