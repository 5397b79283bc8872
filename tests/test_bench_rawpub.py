"""The raw-socket load generator of the benchmarks (bench.rawpub): its pure helpers, and one
run against a real Mosquitto."""

from __future__ import annotations

import io
import json

import mqtt5
import pytest

from bench import rawpub
from bench.progress import Progress
from bench.rawpub import (
    InflightWindow,
    PublisherResult,
    TokenBucket,
    encode_publishes,
    packet_id,
    parse_packets,
    percentile,
    reading_ids,
    run_publisher,
    show_live,
)
from vigil.messages import parse_readings


def test_packet_ids_cycle_through_1_to_65535():
    assert [packet_id(s) for s in (0, 1, 65534, 65535, 65536)] == [1, 2, 65535, 1, 2]


def test_reading_ids_are_consecutive_across_messages():
    assert list(reading_ids(10, 0, 3)) + list(reading_ids(10, 1, 3)) == list(range(10, 16))


def test_encoded_publishes_carry_the_readings_they_say():
    packets = encode_publishes("vigil/data/d", "d", 3, batch=2, start_id=5)
    decoded = [mqtt5.read(memoryview(p))[0] for p in packets]
    assert [p.packet_id for p in decoded] == [1, 2, 3]
    ids = [r.id for p in decoded for r in parse_readings(p.payload, "d")]
    assert ids == list(range(5, 11))


def test_the_token_bucket_releases_at_its_rate_in_small_bursts():
    b = TokenBucket(1000.0, now=0.0)
    assert b.take(0.0, 100) == 0
    assert b.take(0.003, 100) == 3  # 3 ms at 1,000/s
    assert b.take(1.0, 100) == 5  # capped by the 5 ms burst
    assert b.delay(1.0) == pytest.approx(0.001)
    assert TokenBucket(None).take(0.0, 7) == 7 and TokenBucket(None).delay(0.0) == 0.0


def test_the_window_holds_its_limit_and_never_reuses_an_id_in_flight():
    w = InflightWindow(2)
    assert w.free(1)
    w.sent(1)
    assert not w.free(1)  # in flight
    w.sent(2)
    assert not w.free(3)  # full
    assert w.acked(1) and not w.acked(1)  # the second is a stray PUBACK
    assert w.free(3) and w.count == 1
    with pytest.raises(ValueError, match="already in flight"):
        w.sent(2)
    with pytest.raises(ValueError):
        InflightWindow(0)


def test_parse_packets_takes_whole_packets_and_leaves_a_cut_one():
    wire = (
        mqtt5.PubAckPacket(7).write()
        + mqtt5.PubAckPacket(8, reason_code=mqtt5.PubAckReasonCode.NOT_AUTHORIZED).write()
        + mqtt5.PingRespPacket().write()
    )
    acks, others, used = parse_packets(wire + wire[:3])
    assert acks == [(7, 0), (8, 0x87)] and used == len(wire)
    assert [type(p) for p in others] == [mqtt5.PingRespPacket]
    with pytest.raises(ValueError, match="remaining length"):
        parse_packets(bytes([0x40, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))


def test_percentile_by_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(range(1, 101)), 0.99) == 99


def test_the_live_line_counts_confirmed_readings_or_answered_messages():
    a, b = PublisherResult("d1", 100, 2, 1, None), PublisherResult("d2", 100, 2, 1, None)
    a.sent, a.acked, a.unrouted, a.confirmed = 100, 60, 10, 120
    b.sent, b.refused, b.confirmed = 50, 5, 0
    now = [0.0]
    progress = Progress("bench.t", stream=io.StringIO(), clock=lambda: now[0], tty=False)
    with progress.phase("run") as ph:
        now[0] = 10.0
        show_live(ph, [a, b], confirm=True)
        assert (
            ph.line(10.0)
            == "run: sent 150 / 200, 120 / 400 readings confirmed (30%), 12.0/s, 10.0 s"
        )
        show_live(ph, [a, b], confirm=False)
        assert (
            ph.line(10.0)
            == "run: sent 150 / 200, 75 / 200 messages acknowledged (37%), 7.5/s, 10.0 s"
        )


@pytest.mark.integration
def test_a_run_publishes_every_message_and_counts_what_the_broker_said(broker):
    # No consumer session exists: the broker accepts each message with "no matching
    # subscribers", which the publisher counts apart.
    res = run_publisher(
        broker.files.host,
        broker.files.port,
        "dev-1",
        broker.password("dev-1"),
        count=500,
        rate=5000.0,
        window=50,
    )
    assert res.error is None
    assert res.sent == 500 and res.acked + res.unrouted == 500 and res.refused == 0
    assert res.window == 50 and res.cpu_s > 0 and res.elapsed > 0


@pytest.mark.integration
def test_the_command_prints_its_figures_on_stdout_and_its_progress_on_stderr(broker, capsys):
    argv = ["--port", str(broker.files.port), "--device", "dev-1", "--count", "300"]
    rawpub.main([*argv, "--password", broker.password("dev-1"), "--rate", "3000"])
    out, err = capsys.readouterr()
    figures = json.loads(out)  # nothing but the JSON on stdout
    assert figures["sent"] == 300 and figures["error"] is None
    lines = err.splitlines()
    assert lines[0] == (
        f"bench.rawpub: publish: 300 messages as dev-1 to 127.0.0.1:{broker.files.port}, "
        "3,000 msg/s…"
    )
    assert lines[1].startswith("bench.rawpub: publish: done in ")
    assert lines[1].endswith("/s)") and "(300 / 300 messages acknowledged (100%), " in lines[1]
    assert "\r" not in err  # captured, not a terminal: plain lines
