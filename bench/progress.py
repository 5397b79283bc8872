"""What a benchmark is doing while it runs, on stderr (the figures on stdout stay clean).

One :class:`Progress` per bench run (``bench.e2e``, ``bench.storage``...). Each measurement is
a :meth:`Progress.phase`: a line when it starts, a live line while it counts, and a line with
its duration (and its last counts) when it ends::

    bench.e2e: latency: 300 readings, one at a time, under 1,000 readings/s…
    bench.e2e: latency: 81 / 300 samples (27%), 16.1/s, 5.0 s
    bench.e2e: latency: done in 18.6 s (300 / 300 samples (100%), 16.1/s)

On a terminal the live line is rewritten in place (``\\r``) every :data:`TTY_EVERY_S`; into
a pipe or a CI log it is a plain line at most every :data:`PLAIN_EVERY_S`. The clock and the
stream are parameters, so the rendering is tested without sleeping
(``tests/test_bench_progress.py``). Updating is cheap (a clock read when nothing is shown):
the timed loops call it freely.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

#: seconds between rewrites of the live line on a terminal
TTY_EVERY_S = 0.2
#: seconds between plain progress lines into a pipe or a log
PLAIN_EVERY_S = 5.0


# -- formatting (pure) ---------------------------------------------------------------------
def duration(seconds: float) -> str:
    """``12.3 s`` below a minute, ``2 min 05 s`` from there."""
    if seconds < 59.95:  # what would round to "60.0 s"
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s"


def rate(per_s: float) -> str:
    """``2,100/s``; one decimal below 100/s (``3.2/s``)."""
    return f"{per_s:,.0f}/s" if per_s >= 100 else f"{per_s:.1f}/s"


def counts(done: int, total: int | None, unit: str = "") -> str:
    """``12,400 / 40,000 readings stored (31%)``: the share is rounded down, so 100% means
    all of it; without a total (or with 0) just the count."""
    text = f"{done:,}" if total is None else f"{done:,} / {total:,}"
    if unit:
        text += f" {unit}"
    if total:
        text += f" ({100 * done // total}%)"
    return text


# -- the live part -------------------------------------------------------------------------
class Phase:
    """One measurement under way: :meth:`update` records its counts and shows them when the
    last line is older than the progress' interval."""

    def __init__(self, progress: Progress, name: str, total: int | None, unit: str) -> None:
        self.progress = progress
        self.name = name
        self.total = total
        self.unit = unit
        self.done: int | None = None
        self.note = ""
        self.started = progress.clock()
        self._shown = self.started  # the start line was just shown
        self._done_at = self.started  # when the count last changed

    def update(
        self,
        done: int | None = None,
        *,
        total: int | None = None,
        note: str | None = None,
        unit: str | None = None,
    ) -> None:
        """Record how far it got (``done`` of ``total`` ``unit``; ``note``: anything else,
        shown first) and show it if it is time. Without ``done``: only the note and the time
        so far."""
        now = self.progress.clock()
        if done is not None and done != self.done:
            self.done = done
            self._done_at = now
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        if unit is not None:
            self.unit = unit
        if now - self._shown >= self.progress.every_s:
            self._shown = now
            self.progress.write(self.line(now), live=True)

    def elapsed(self, now: float | None = None) -> float:
        return (self.progress.clock() if now is None else now) - self.started

    def rate(self) -> float | None:
        """The count per second from the start to its last change (so a count that has
        stopped keeps the rate it reached), None before it has one."""
        counting = self._done_at - self.started
        return None if self.done is None or counting <= 0 else self.done / counting

    def line(self, now: float) -> str:
        """The live line: note, counts, their rate, time so far."""
        parts = [self.note] if self.note else []
        if self.done is not None:
            parts.append(counts(self.done, self.total, self.unit))
        per_s = self.rate()
        if per_s is not None:
            parts.append(rate(per_s))
        parts.append(duration(self.elapsed(now)))
        return f"{self.name}: {', '.join(parts)}"

    def summary(self, now: float) -> str:
        """The end line: the duration, and the last counts with their rate."""
        text = f"{self.name}: done in {duration(self.elapsed(now))}"
        if self.done is not None:
            detail = counts(self.done, self.total, self.unit)
            per_s = self.rate()
            if per_s is not None:
                detail += f", {rate(per_s)}"
            text += f" ({detail})"
        return text


class Progress:
    """The progress of one bench run on ``stream`` (stderr): phases, and plain lines with
    :meth:`say`. ``tty`` (default: whether the stream is a terminal) picks the rendering;
    ``every_s`` the interval between live lines; ``width`` the terminal width live lines are
    cut to (default: the terminal's)."""

    def __init__(
        self,
        bench: str,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
        every_s: float | None = None,
        width: int | None = None,
    ) -> None:
        self.bench = bench
        self.stream = sys.stderr if stream is None else stream
        self.tty = _isatty(self.stream) if tty is None else tty
        if every_s is None:
            every_s = TTY_EVERY_S if self.tty else PLAIN_EVERY_S
        self.every_s = every_s
        self.width = width or shutil.get_terminal_size().columns
        self.clock = clock
        self.started = clock()
        self._live = 0  # characters of the live line on the terminal, 0: none
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        """A line of its own: ``bench.e2e: text``."""
        self.write(text)

    def finish(self) -> None:
        """The last line: how long the whole bench took."""
        self.say(f"finished in {duration(self.clock() - self.started)}")

    @contextlib.contextmanager
    def phase(
        self, name: str, what: str = "", *, total: int | None = None, unit: str = ""
    ) -> Iterator[Phase]:
        """A measurement: ``name: what…`` now, live lines from :meth:`Phase.update`, and
        ``name: done in 12.3 s (...)`` at the end (``failed after`` if it raised)."""
        self.say(f"{name}: {what}…" if what else f"{name}…")
        phase = Phase(self, name, total, unit)
        try:
            yield phase
        except BaseException as exc:
            elapsed = duration(phase.elapsed())
            self.write(f"{name}: failed after {elapsed} ({type(exc).__name__})")
            raise
        self.write(phase.summary(self.clock()))

    def log_handler(self) -> logging.Handler:
        """A logging handler writing each record on a line of its own on this stream (on a
        terminal, over the live line rather than after it)."""
        return _LogHandler(self)

    def write(self, text: str, *, live: bool = False, prefix: bool = True) -> None:
        """``text`` after the bench's name (``prefix``): on a line of its own, or (``live``)
        as the live line, rewritten in place on a terminal and a plain line elsewhere."""
        line = f"{self.bench}: {text}" if prefix else text
        with self._lock:
            if not self.tty:
                out = line + "\n"
            elif live:
                line = line[: max(1, self.width - 1)]  # a wrapped line cannot be rewritten
                out = "\r" + line + " " * (self._live - len(line))
                self._live = len(line)
            else:  # over the live line, if one is there
                out = ("\r" if self._live else "") + line + " " * (self._live - len(line)) + "\n"
                self._live = 0
            self.stream.write(out)
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class _LogHandler(logging.Handler):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.write(self.format(record), prefix=False)
        except Exception:
            self.handleError(record)
