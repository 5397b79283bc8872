"""The benchmarks' progress lines (bench.progress): formatting, throttling and the terminal
and plain renderings, with a fake clock and a string stream (no sleeping)."""

from __future__ import annotations

import io
import logging

import pytest

from bench.progress import PLAIN_EVERY_S, TTY_EVERY_S, Progress, counts, duration, rate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(tty: bool, **kw) -> tuple[Progress, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    return Progress("bench.x", stream=out, clock=clock, tty=tty, **kw), out, clock


def test_durations_rates_and_counts_read_as_the_figures_do():
    assert duration(0) == "0.0 s"
    assert duration(12.34) == "12.3 s"
    assert duration(59.96) == "1 min 00 s"  # not "60.0 s"
    assert duration(125.4) == "2 min 05 s"
    assert rate(2100.4) == "2,100/s"
    assert rate(100) == "100/s"
    assert rate(3.26) == "3.3/s"
    assert counts(12_400, 40_000, "readings stored") == "12,400 / 40,000 readings stored (31%)"
    assert counts(39_999, 40_000) == "39,999 / 40,000 (99%)"  # rounded down: 100% is all
    assert counts(40_001, 40_000, "x") == "40,001 / 40,000 x (100%)"
    assert counts(7, None, "points") == "7 points"
    assert counts(0, 0, "series") == "0 / 0 series"  # no share of nothing


def test_a_plain_stream_gets_whole_lines_at_most_every_few_seconds():
    progress, out, clock = make(tty=False)
    assert progress.every_s == PLAIN_EVERY_S
    with progress.phase("throughput", "4 devices", total=40_000, unit="readings stored") as ph:
        for t, done in ((1, 2_000), (4.9, 9_000), (5.0, 10_000), (6, 12_000), (10.5, 21_000)):
            clock.now = 100 + t
            ph.update(done, note=f"published {done * 2:,}")
        clock.now = 114
        ph.update(40_000, note="")  # recorded; 3.5 s after the last line: not shown
        clock.now = 120
    assert out.getvalue().splitlines() == [
        "bench.x: throughput: 4 devices…",
        "bench.x: throughput: published 20,000, 10,000 / 40,000 readings stored (25%), "
        "2,000/s, 5.0 s",
        "bench.x: throughput: published 42,000, 21,000 / 40,000 readings stored (52%), "
        "2,000/s, 10.5 s",
        # the rate is up to the count's last change (at 14 s), not diluted by the wait after
        "bench.x: throughput: done in 20.0 s (40,000 / 40,000 readings stored (100%), 2,857/s)",
    ]
    assert "\r" not in out.getvalue()


def test_a_terminal_gets_one_line_rewritten_in_place_then_the_end_over_it():
    progress, out, clock = make(tty=True, width=200)
    assert progress.every_s == TTY_EVERY_S
    with progress.phase("latency", total=300, unit="samples") as ph:
        for dt, done in ((0.125, 10), (0.125, 25), (0.125, 40), (0.125, 150), (0.125, 300)):
            clock.now += dt  # shown at 0.25 s and 0.5 s: 0.2 s apart at least
            ph.update(done)
        clock.now += 0.375
    first = "bench.x: latency: 25 / 300 samples (8%), 100/s, 0.2 s"
    second = "bench.x: latency: 150 / 300 samples (50%), 300/s, 0.5 s"
    end = "bench.x: latency: done in 1.0 s (300 / 300 samples (100%), 480/s)"  # 300 in 0.625 s
    assert out.getvalue() == (
        "bench.x: latency…\n"
        f"\r{first}"
        f"\r{second}"  # longer than the first: nothing to pad
        f"\r{end}{' ' * (len(second) - len(end))}\n"
    )


def test_on_a_terminal_a_shorter_live_line_and_a_log_line_clear_what_was_there():
    progress, out, clock = make(tty=True, width=200)
    with progress.phase("repair", unit="series") as ph:
        clock.now += 1
        ph.update(1_000, total=2_000, note="a long note, 123,456 points copied")
        clock.now += 1
        ph.update(1_500, note="")
        long_line = "bench.x: repair: a long note, 123,456 points copied, 1,000 / 2,000 series " + (
            "(50%), 1,000/s, 1.0 s"
        )
        short = "bench.x: repair: 1,500 / 2,000 series (75%), 750/s, 2.0 s"
        handler = progress.log_handler()
        handler.setFormatter(logging.Formatter("[log] %(message)s"))
        handler.emit(logging.makeLogRecord({"msg": "influx-2 is down"}))
    text = out.getvalue()
    assert f"\r{long_line}\r{short}{' ' * (len(long_line) - len(short))}" in text
    # the log record replaces the live line instead of running on after it
    assert f"\r[log] influx-2 is down{' ' * (len(short) - 22)}\n" in text
    assert text.endswith("bench.x: repair: done in 2.0 s (1,500 / 2,000 series (75%), 750/s)\n")


def test_on_a_terminal_the_live_line_is_cut_to_the_width():
    progress, out, clock = make(tty=True, width=30)
    with progress.phase("throughput", total=40_000, unit="readings stored") as ph:
        clock.now += 1
        ph.update(12_400)
    live = out.getvalue().split("\r")[1]
    assert live == "bench.x: throughput: 12,400 /"  # 29 characters: it never wraps
    assert out.getvalue().endswith("(31%), 12,400/s)\n")  # the end line is whole


def test_a_count_that_has_stopped_keeps_the_rate_it_reached():
    progress, out, clock = make(tty=False, every_s=1.0)
    with progress.phase("latency", total=60, unit="samples") as ph:
        clock.now += 4
        ph.update(60)
        for _ in range(3):  # waiting for something else: the count stays, so does the rate
            clock.now += 2
            ph.update(60, note="waiting")
    assert out.getvalue().splitlines()[1:] == [
        "bench.x: latency: 60 / 60 samples (100%), 15.0/s, 4.0 s",
        "bench.x: latency: waiting, 60 / 60 samples (100%), 15.0/s, 6.0 s",
        "bench.x: latency: waiting, 60 / 60 samples (100%), 15.0/s, 8.0 s",
        "bench.x: latency: waiting, 60 / 60 samples (100%), 15.0/s, 10.0 s",
        "bench.x: latency: done in 10.0 s (60 / 60 samples (100%), 15.0/s)",
    ]


def test_a_phase_without_counts_shows_its_note_and_time_and_its_duration_at_the_end():
    progress, out, clock = make(tty=False, every_s=1.0)
    with progress.phase("servers", "starting Mosquitto and 3 InfluxDB servers") as ph:
        clock.now += 1.5
        ph.update(note="influx-1 up")
        clock.now += 2
    assert out.getvalue().splitlines() == [
        "bench.x: servers: starting Mosquitto and 3 InfluxDB servers…",
        "bench.x: servers: influx-1 up, 1.5 s",
        "bench.x: servers: done in 3.5 s",
    ]


def test_a_failing_phase_says_so_with_its_duration_and_the_error_goes_on():
    progress, out, clock = make(tty=False)
    with pytest.raises(TimeoutError), progress.phase("throughput"):
        clock.now += 600
        raise TimeoutError("timed out waiting for all readings stored")
    assert out.getvalue().splitlines()[-1] == (
        "bench.x: throughput: failed after 10 min 00 s (TimeoutError)"
    )


def test_finish_gives_the_whole_run_and_say_a_plain_line():
    progress, out, clock = make(tty=False)
    progress.say("reference: measured apart")
    clock.now += 75
    progress.finish()
    assert out.getvalue().splitlines() == [
        "bench.x: reference: measured apart",
        "bench.x: finished in 1 min 15 s",
    ]


def test_the_rendering_follows_the_stream_unless_told():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress("b", stream=Terminal(), width=80).tty
    assert not Progress("b", stream=io.StringIO()).tty
    assert not Progress("b", stream=Terminal(), tty=False).tty
