"""A raw-socket MQTT 5 load generator: ``python -m bench.rawpub`` (used by ``bench.ingest``).

The paho publishers of ``bench.e2e`` spend more CPU per message than ingest does, so on a
2-core machine the bench measured the load generator, not ingest. This one costs a few
microseconds per message:

- **Sans-I/O codec, plain socket.** It connects as a device user with a blocking TCP socket
  and the ``mqtt5`` codec (client id == device name: the broker binds device credentials
  to their client id). No network thread, no callbacks, no per-message objects.
- **Everything pre-encoded.** Every PUBLISH (QoS 1) is encoded before the timed run: the
  payloads in Vigil's own formats (:func:`vigil.messages.encode_readings`: one reading per
  message, or a batch of ``batch`` readings), reading ids unique per device from
  ``start_id``, and packet ids ``1..65535`` assigned in sequence (:func:`packet_id`). The
  timed loop only joins ready byte strings and calls ``sendall``.
- **Token bucket, bounded window.** A :class:`TokenBucket` releases messages at the target
  rate (small bursts, so one ``sendall`` carries all messages due since the last wake-up);
  an :class:`InflightWindow` keeps at most ``window`` messages unacknowledged (never more
  than the broker's Receive Maximum from its CONNACK), and a packet id is sent again only
  after the PUBACK of its previous use.
- **PUBACKs in bulk.** Each wake-up reads everything the socket holds (``recv`` of up to
  1 MiB) and :func:`parse_packets` decodes every complete packet: PUBACKs by hand (4
  bytes each in the common case), anything else with ``mqtt5.read``. Reason codes >= 0x80
  count as refused, 0x10 ("no matching subscribers": the broker accepted the message and
  delivered it to nobody) is counted apart.
- **Confirmations (optional).** With ``confirm=True`` the same connection subscribes to the
  device's own ``{root}/ack/{device}`` (a device may read it), where ingest confirms what it
  stored. The publisher then also waits (up to ``confirm_timeout``) until every reading is
  confirmed, and reports the confirmation timeline (for delivered-per-second and drain) and
  publish-to-stored latencies of every ``sample_every``-th message.

CPU is measured with ``time.thread_time`` around the publishing loop, so the figure is this
publisher's own whether it runs in a thread (:func:`run_many`) or a process; encoding is
timed apart. The counts of a :class:`PublisherResult` grow while it runs, so
:func:`run_many` can show them on a :class:`bench.progress.Phase` (sent, acknowledged or
confirmed, rate) while its threads publish. Helpers are pure where possible and tested in
``tests/test_bench_rawpub.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import select
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mqtt5

from bench.progress import Phase, Progress
from vigil.messages import Confirmation, InvalidMessage, Reading, encode_readings
from vigil.topics import Topics

#: Reading timestamps are TS0 + reading id (ms), so an id range is a time range.
TS0 = 1_763_000_000_000
METRICS = ("temperature", "humidity", "pressure", "co2")
MAX_PACKET_ID = 65535
PUBACK = 0x40
REFUSED = 0x80
NO_MATCHING_SUBSCRIBERS = 0x10
RECV_BYTES = 1 << 20
KEEPALIVE_S = 60


# -- pure helpers -------------------------------------------------------------------------
def packet_id(seq: int) -> int:
    """The packet id of the ``seq``-th message (0-based): 1..65535, then 1 again."""
    return seq % MAX_PACKET_ID + 1


def reading_ids(start_id: int, seq: int, batch: int) -> range:
    """The reading ids message ``seq`` carries."""
    first = start_id + seq * batch
    return range(first, first + batch)


def make_reading(device: str, rid: int) -> Reading:
    """The reading with id ``rid``: timestamp TS0 + rid ms, metrics in turn."""
    return Reading(
        id=rid,
        device=device,
        ts=TS0 + rid,
        kind="sensor",
        metric=METRICS[rid % len(METRICS)],
        value=rid * 0.5,
        unit="u",
    )


def encode_publishes(
    topic: str, device: str, count: int, batch: int = 1, start_id: int = 1
) -> list[bytes]:
    """``count`` QoS 1 PUBLISH packets, ready to send, message ``seq`` with packet id
    :func:`packet_id` (seq) and the readings :func:`reading_ids` (start_id, seq, batch)."""
    out = []
    qos = mqtt5.QoS.AT_LEAST_ONCE
    for seq in range(count):
        readings = [make_reading(device, rid) for rid in reading_ids(start_id, seq, batch)]
        payload = encode_readings(device, readings)
        out.append(mqtt5.PublishPacket(topic, payload, qos=qos, packet_id=packet_id(seq)).write())
    return out


class TokenBucket:
    """Tokens accrue at ``rate`` per second up to ``burst``; each message takes one. Time is
    passed in, so the bucket is pure and testable. ``rate`` None or <= 0: no limit."""

    def __init__(self, rate: float | None, burst: float | None = None, now: float = 0.0) -> None:
        self.rate = rate if rate and rate > 0 else None
        # 5 ms worth: the loop wakes about every millisecond and sends what is due at once
        self.burst = max(1.0, burst if burst is not None else (self.rate or 0) * 0.005)
        self.tokens = 0.0
        self.last = now

    def take(self, now: float, want: int) -> int:
        """Up to ``want`` messages may go now; returns how many (and spends them)."""
        if self.rate is None:
            return max(0, want)
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        n = max(0, min(want, int(self.tokens)))
        self.tokens -= n
        return n

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until the next token (0 if one is there)."""
        if self.rate is None:
            return 0.0
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


class InflightWindow:
    """The packet ids awaiting their PUBACK: at most ``limit`` at once, and an id is not
    sent again before its PUBACK came back."""

    def __init__(self, limit: int) -> None:
        if not 1 <= limit <= MAX_PACKET_ID:
            raise ValueError(f"window {limit} is not in 1..{MAX_PACKET_ID}")
        self.limit = limit
        self.count = 0
        self._busy = bytearray(MAX_PACKET_ID + 1)

    def free(self, pid: int) -> bool:
        """Whether ``pid`` may be sent now (room in the window, the id not in flight)."""
        return self.count < self.limit and not self._busy[pid]

    def sent(self, pid: int) -> None:
        if self._busy[pid]:
            raise ValueError(f"packet id {pid} is already in flight")
        self._busy[pid] = 1
        self.count += 1

    def acked(self, pid: int) -> bool:
        """Release ``pid``; False if it was not in flight (a stray PUBACK)."""
        if not self._busy[pid]:
            return False
        self._busy[pid] = 0
        self.count -= 1
        return True


def parse_packets(buf: bytes | bytearray) -> tuple[list[tuple[int, int]], list[Any], int]:
    """Decode the complete packets at the start of ``buf``: PUBACKs as (packet id, reason
    code) pairs, every other packet as an ``mqtt5`` object; and how many bytes they took (a
    packet cut at the end stays for the next read)."""
    acks: list[tuple[int, int]] = []
    others: list[Any] = []
    pos, end = 0, len(buf)
    while pos + 2 <= end:
        first = buf[pos]
        # remaining length: a variable byte integer of 1 to 4 bytes
        length, shift, i = 0, 0, pos + 1
        while True:
            if i >= end:
                return acks, others, pos
            b = buf[i]
            length |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ValueError("malformed remaining length")
        if i + length > end:
            break
        if first == PUBACK and length >= 2:
            pid = (buf[i] << 8) | buf[i + 1]
            acks.append((pid, buf[i + 2] if length >= 3 else 0))
        else:
            packet, _ = mqtt5.read(memoryview(bytes(buf[pos : i + length])))
            others.append(packet)
        pos = i + length
    return acks, others, pos


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p`` (0..1) quantile by nearest rank, None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]


# -- the publisher -------------------------------------------------------------------------
@dataclass
class PublisherResult:
    """What one publisher did; ``sent``, ``acked``, ``refused``, ``unrouted`` and
    ``confirmed`` are kept up to date while it runs (another thread may read them)."""

    device: str
    count: int
    batch: int
    start_id: int
    rate: float | None
    sent: int = 0
    acked: int = 0
    refused: int = 0
    unrouted: int = 0
    stray_acks: int = 0
    #: seconds from the first send to the last PUBACK
    elapsed: float = 0.0
    #: seconds from the first send to the last send
    send_elapsed: float = 0.0
    #: this thread's CPU seconds while publishing (from the first send to the last PUBACK)
    cpu_s: float = 0.0
    #: CPU seconds spent pre-encoding (before the timed run)
    encode_s: float = 0.0
    receive_max: int = 0
    window: int = 0
    #: with confirm: readings confirmed (a re-confirmation counts again), time from the
    #: first send to the last confirmation (None if not all came), samples' latencies (s)
    confirmed: int = 0
    all_confirmed_at: float | None = None
    latencies: list[float] = field(default_factory=list)
    #: with confirm: (seconds since the first send, readings confirmed so far), each change
    timeline: list[tuple[float, int]] = field(default_factory=list)
    error: str | None = None

    @property
    def readings(self) -> int:
        return self.count * self.batch

    @property
    def cpu_us_per_msg(self) -> float:
        return self.cpu_s / self.sent * 1e6 if self.sent else 0.0

    @property
    def send_rate(self) -> float:
        return self.sent / self.send_elapsed if self.send_elapsed > 0 else 0.0

    def confirmed_by(self, t: float) -> int:
        """Readings confirmed within ``t`` seconds of the first send."""
        n = 0
        for at, total in self.timeline:
            if at > t:
                break
            n = total
        return n

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("timeline")
        d.pop("latencies")
        d["cpu_us_per_msg"] = round(self.cpu_us_per_msg, 2)
        d["send_rate"] = round(self.send_rate, 1)
        d["latency_samples"] = len(self.latencies)
        return d


def connect(
    host: str,
    port: int,
    username: str,
    password: str | bytes,
    client_id: str | None = None,
    *,
    clean_start: bool = True,
    session_expiry: int = 0,
    timeout: float = 10.0,
) -> tuple[socket.socket, Any, bytearray]:
    """A connected socket, the broker's CONNACK, and whatever bytes followed it."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pw = password.encode() if isinstance(password, str) else password
    sock.sendall(
        mqtt5.ConnectPacket(
            client_id or username,
            username=username,
            password=pw,
            clean_start=clean_start,
            keep_alive=KEEPALIVE_S,
            session_expiry_interval=session_expiry,
        ).write()
    )
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            sock.close()
            raise ConnectionError(f"{username}: broker closed the connection before CONNACK")
        buf += chunk
        try:
            packet, n = mqtt5.read(memoryview(bytes(buf)))
        except IndexError:
            if time.monotonic() > deadline:
                sock.close()
                raise TimeoutError(f"{username}: no CONNACK") from None
            continue
        del buf[:n]
        break
    if not isinstance(packet, mqtt5.ConnAckPacket) or packet.reason_code != 0:
        sock.close()
        raise ConnectionError(f"{username}: connection refused: {packet!r}")
    return sock, packet, buf


def end_session(host: str, port: int, username: str, password: str | bytes) -> None:
    """Discard the broker session of client id ``username`` (connect with a clean start and
    no expiry, then disconnect): what a stopped persistent consumer leaves queued goes."""
    sock, _, _ = connect(host, port, username, password, clean_start=True, session_expiry=0)
    try:
        sock.sendall(mqtt5.DisconnectPacket().write())
    finally:
        sock.close()


def run_publisher(
    host: str,
    port: int,
    username: str,
    password: str | bytes,
    device: str | None = None,
    count: int = 1000,
    rate: float | None = None,
    batch: int = 1,
    start_id: int = 1,
    *,
    window: int = 1000,
    root: str = "vigil",
    confirm: bool = False,
    confirm_timeout: float = 60.0,
    ack_timeout: float = 60.0,
    sample_every: int = 0,
    start_at: float | None = None,
    packets: list[bytes] | None = None,
    result: PublisherResult | None = None,
) -> PublisherResult:
    """Publish ``count`` pre-encoded QoS 1 messages as ``username`` on ``device``'s data
    topic at ``rate`` messages/s (None: as fast as the window allows), each with ``batch``
    readings, reading ids from ``start_id``; return when every PUBACK is in (and, with
    ``confirm``, every reading is confirmed on the device's ack topic, or the timeouts
    passed). ``start_at``: a ``time.perf_counter`` value to begin at (publishers started
    together begin together); ``packets``: already encoded (see :func:`encode_publishes`);
    ``result``: the result to fill in and return (its counts grow while it runs).
    """
    device = device or username
    topics = Topics(root)
    res = result if result is not None else PublisherResult(device, count, batch, start_id, rate)
    if packets is None:
        c0 = time.thread_time()
        packets = encode_publishes(topics.data(device), device, count, batch, start_id)
        res.encode_s = time.thread_time() - c0
    sock, connack, buf = connect(host, port, username, password, device)
    try:
        res.receive_max = int(connack.receive_max)
        res.window = min(window, res.receive_max or window)
        if confirm:
            sub = mqtt5.SubscribePacket(
                1, [mqtt5.TopicFilter(topics.ack(device), max_qos=mqtt5.QoS.AT_MOST_ONCE)]
            )
            sock.sendall(sub.write())
            _wait_suback(sock, buf)
        _publish_loop(
            sock,
            buf,
            packets,
            res,
            confirm=confirm,
            confirm_timeout=confirm_timeout,
            ack_timeout=ack_timeout,
            sample_every=sample_every,
            start_at=start_at,
        )
        with contextlib.suppress(OSError):
            sock.sendall(mqtt5.DisconnectPacket().write())
    except (OSError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
    return res


def _wait_suback(sock: socket.socket, buf: bytearray) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, others, n = parse_packets(buf)
        del buf[:n]
        for p in others:
            if isinstance(p, mqtt5.SubAckPacket):
                if any(int(rc) >= REFUSED for rc in p.reason_codes):
                    raise ConnectionError(f"subscription refused: {p.reason_codes}")
                return
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            raise ConnectionError("broker closed the connection before SUBACK")
        buf += chunk
    raise TimeoutError("no SUBACK")


def _publish_loop(
    sock: socket.socket,
    buf: bytearray,
    packets: list[bytes],
    res: PublisherResult,
    *,
    confirm: bool,
    confirm_timeout: float,
    ack_timeout: float,
    sample_every: int,
    start_at: float | None,
) -> None:
    count = len(packets)
    batch = res.batch
    win = InflightWindow(res.window)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    sock.setblocking(True)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.perf_counter()))
    t0 = time.perf_counter()
    c0 = time.thread_time()
    bucket = TokenBucket(res.rate, now=t0)
    sent = 0
    done = 0  # PUBACKs in (acked + refused + unrouted)
    last_io = t0
    last_ack = t0
    pending: dict[int, float] = {}  # sampled first reading id -> send time
    total_readings = count * batch
    confirm_deadline: float | None = None
    acks_deadline: float | None = None
    timeline = res.timeline
    while True:
        now = time.perf_counter()
        if sent < count:
            n = bucket.take(now, min(count - sent, win.limit - win.count))
            if n:
                k = 0
                while k < n and win.free(packet_id(sent + k)):
                    win.sent(packet_id(sent + k))
                    k += 1
                if k < n:  # an id still in flight: give the tokens back
                    bucket.tokens += n - k
                if k:
                    if sample_every:
                        for seq in range(sent, sent + k):
                            if seq % sample_every == 0:
                                pending[res.start_id + seq * batch] = now
                    sock.sendall(b"".join(packets[sent : sent + k]) if k > 1 else packets[sent])
                    sent += k
                    res.sent = sent
                    last_io = now
                    if sent == count:
                        res.send_elapsed = now - t0
                        acks_deadline = now + ack_timeout
            wait_ms = 1.0 if sent < count else 50.0
        else:
            wait_ms = 50.0
        if done >= count and (not confirm or res.confirmed >= total_readings):
            break
        if acks_deadline is not None and done < count and now > acks_deadline:
            res.error = f"{count - done} PUBACK(s) missing after {ack_timeout:g}s"
            break
        if confirm_deadline is not None and now > confirm_deadline:
            break
        if now - last_io > KEEPALIVE_S / 3:
            sock.sendall(mqtt5.PingReqPacket().write())
            last_io = now
        if not poller.poll(wait_ms):
            continue
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
        acks, others, used = parse_packets(buf)
        del buf[:used]
        now = time.perf_counter()
        for pid, rc in acks:
            if not win.acked(pid):
                res.stray_acks += 1
                continue
            if rc >= REFUSED:
                res.refused += 1
            elif rc == NO_MATCHING_SUBSCRIBERS:
                res.unrouted += 1
            else:
                res.acked += 1
        if acks:
            done = res.acked + res.refused + res.unrouted
            last_ack = now
            if done >= count and res.elapsed == 0.0:
                res.elapsed = now - t0
                res.cpu_s = time.thread_time() - c0
                confirm_deadline = now + confirm_timeout
        for p in others:
            if isinstance(p, mqtt5.PublishPacket) and confirm:
                _on_confirmation(p.payload, res, pending, now, t0, total_readings)
            elif isinstance(p, mqtt5.DisconnectPacket):
                raise ConnectionError(f"broker disconnected: {p.reason_code!r}")
        if (timeline and timeline[-1][1] != res.confirmed) or (not timeline and res.confirmed):
            timeline.append((now - t0, res.confirmed))
    if res.elapsed == 0.0:
        res.elapsed = last_ack - t0
        res.cpu_s = time.thread_time() - c0
    res.sent = sent


def _on_confirmation(
    payload: bytes,
    res: PublisherResult,
    pending: dict[int, float],
    now: float,
    t0: float,
    total: int,
) -> None:
    try:
        conf = Confirmation.decode(payload)
    except InvalidMessage:
        return
    lo_id, hi_id = res.start_id, res.start_id + total - 1
    for first, last in conf.ranges:
        lo, hi = max(first, lo_id), min(last, hi_id)
        if lo <= hi:
            res.confirmed += hi - lo + 1
    if pending:
        for rid in [rid for rid in pending if rid in conf]:
            res.latencies.append(now - pending.pop(rid))
    if res.confirmed >= total and res.all_confirmed_at is None:
        res.all_confirmed_at = now - t0


def show_live(phase: Phase, results: Sequence[PublisherResult], confirm: bool) -> None:
    """The publishers' counts so far on ``phase``: messages sent, and readings confirmed
    (``confirm``) or messages the broker answered."""
    messages = sum(r.count for r in results)
    note = f"sent {sum(r.sent for r in results):,} / {messages:,}"
    if confirm:
        done, total = sum(r.confirmed for r in results), sum(r.readings for r in results)
        phase.update(done, total=total, note=note, unit="readings confirmed")
    else:
        done = sum(r.acked + r.refused + r.unrouted for r in results)
        phase.update(done, total=messages, note=note, unit="messages acknowledged")


def run_many(
    specs: Sequence[dict[str, Any]], delay: float = 0.2, phase: Phase | None = None
) -> list[PublisherResult]:
    """Run one :func:`run_publisher` per keyword dict in ``specs``, each in its own thread,
    all starting together ``delay`` seconds after the slowest has encoded its packets;
    ``phase``: where to show their counts meanwhile (see :func:`show_live`)."""
    results = [
        PublisherResult(
            spec.get("device") or spec["username"],
            spec["count"],
            spec.get("batch", 1),
            spec.get("start_id", 1),
            spec.get("rate"),
        )
        for spec in specs
    ]
    encoded: list[list[bytes] | None] = [None] * len(specs)

    def encode(i: int, spec: dict[str, Any]) -> None:
        device = spec.get("device") or spec["username"]
        topic = Topics(spec.get("root", "vigil")).data(device)
        c0 = time.thread_time()
        encoded[i] = encode_publishes(
            topic, device, spec["count"], spec.get("batch", 1), spec.get("start_id", 1)
        )
        results[i].encode_s = time.thread_time() - c0

    threads = [threading.Thread(target=encode, args=(i, s)) for i, s in enumerate(specs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start_at = time.perf_counter() + delay

    def run(i: int, spec: dict[str, Any]) -> None:
        try:
            run_publisher(**spec, packets=encoded[i], start_at=start_at, result=results[i])
        except Exception as exc:  # reported in the result
            results[i].error = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(specs)]
    for t in threads:
        t.start()
    confirm = any(spec.get("confirm") for spec in specs)
    for t in threads:
        while t.is_alive():
            t.join(0.25)
            if phase is not None:
                show_live(phase, results, confirm)
    if phase is not None:
        show_live(phase, results, confirm)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.rawpub", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--device", required=True, help="device id (also username and client id)")
    pw = ap.add_mutually_exclusive_group(required=True)
    pw.add_argument("--password")
    pw.add_argument("--password-file", type=Path)
    ap.add_argument("--count", type=int, default=10_000, help="messages")
    ap.add_argument("--rate", type=float, default=None, help="messages/s (default: no limit)")
    ap.add_argument("--batch", type=int, default=1, help="readings per message")
    ap.add_argument("--start-id", type=int, default=1)
    ap.add_argument("--window", type=int, default=1000, help="unacknowledged messages at most")
    ap.add_argument("--root", default="vigil", help="topic root")
    ap.add_argument("--confirm", action="store_true", help="also wait for ingest's confirmations")
    ap.add_argument("--sample-every", type=int, default=0, help="latency sample every N msgs")
    args = ap.parse_args(argv)
    password = args.password or args.password_file.read_text().strip()
    spec = {
        "host": args.host,
        "port": args.port,
        "username": args.device,
        "password": password,
        "device": args.device,
        "count": args.count,
        "rate": args.rate,
        "batch": args.batch,
        "start_id": args.start_id,
        "window": args.window,
        "root": args.root,
        "confirm": args.confirm,
        "sample_every": args.sample_every,
    }
    progress = Progress("bench.rawpub")
    offered = f"{args.rate:,.0f} msg/s" if args.rate else "no rate limit"
    what = f"{args.count:,} messages as {args.device} to {args.host}:{args.port}, {offered}"
    with progress.phase("publish", what) as ph:
        (res,) = run_many([spec], delay=0.0, phase=ph)
    out = res.summary()
    if res.latencies:
        out["latency_ms_p50"] = round((percentile(res.latencies, 0.5) or 0) * 1000, 1)
        out["latency_ms_p99"] = round((percentile(res.latencies, 0.99) or 0) * 1000, 1)
    print(json.dumps(out, indent=2))
    print(
        f"{res.sent:,} sent, {res.acked:,} acked, {res.refused} refused, {res.unrouted} "
        f"unrouted in {res.elapsed:.2f}s ({res.send_rate:,.0f} msg/s sent); "
        f"{res.cpu_us_per_msg:.2f} µs CPU/msg (encoding {res.encode_s:.2f}s apart)",
        file=sys.stderr,
    )
    return 0 if res.error is None and res.acked == res.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
