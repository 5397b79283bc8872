"""The fast receive path (vigil.fastmqtt): its pure core (decode, route, collect) directly and
fuzzed, and the client against a real Mosquitto: batches, manual acks, a resumed session,
shared subscriptions, refusals, and a broker that sends garbage (publish_wait across an
outage: tests/test_vigil_mqtt.py, on both clients)."""

from __future__ import annotations

import socket
import threading
import time

import mqtt5
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import connected, wait_until

from vigil.fastmqtt import (
    FastMqttClient,
    MalformedPacket,
    Route,
    Router,
    collect,
    decode,
    encode_acks,
    packet_length,
)
from vigil.mqtt import Message, PublishError
from vigil.settings import BrokerSettings, MqttClientSettings
from vigil.topicfilter import TopicFilter

QOS1 = mqtt5.QoS.AT_LEAST_ONCE


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    return mqtt5.PublishPacket(topic, payload, qos=QOS1, packet_id=mid).write()


def stream(n: int) -> bytes:
    """PUBLISHes with a PUBACK and a PINGRESP among them, as a broker sends them."""
    parts = [
        publish_packet(f"vigil/data/dev-{i % 3}", b"x" * (i * 7 % 300), i + 1) for i in range(n)
    ]
    parts.insert(n // 2, mqtt5.PubAckPacket(9).write())
    parts.insert(1, mqtt5.PingRespPacket().write())
    return b"".join(parts)


def route(raw: str) -> Route:
    return Route(TopicFilter.parse(raw), lambda _m: None, True)


# -- the pure core -----------------------------------------------------------------------
def test_decode_takes_every_whole_packet_and_leaves_the_rest():
    data = stream(20)
    whole = decode(data)
    assert whole.error is None and whole.consumed == len(data) and len(whole.packets) == 22
    for cut in (1, 2, 5, len(data) // 2, len(data) - 1):
        head = decode(data[:cut])
        assert head.error is None
        rest = decode(data[head.consumed :])
        assert [p.write() for p in head.packets + rest.packets] == [
            p.write() for p in whole.packets
        ]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=5000))
def test_decode_is_total_on_any_bytes(junk, cut):
    data = (stream(5) + junk)[:cut] if cut % 2 else junk
    out = decode(data)  # never raises: packets, then maybe an error
    assert 0 <= out.consumed <= len(data)
    assert sum(len(p.write()) for p in out.packets) == out.consumed
    if out.error is not None:
        assert isinstance(out.error, MalformedPacket) and out.error.offset == out.consumed


def test_a_remaining_length_of_five_bytes_is_malformed():
    bad = bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    with pytest.raises(MalformedPacket, match="longer than 4"):
        packet_length(bad)
    assert decode(bad).error is not None
    assert packet_length(bytes([0x30])) is None  # the length has not come yet
    assert packet_length(bytes([0x30, 0x80, 0x01])) == 3 + 128


def test_the_first_matching_subscription_routes_and_share_is_stripped():
    router = Router()
    shared, alerts = route("$share/ingest/vigil/data/#"), route("vigil/alerts/+/+")
    router.add(shared)
    router.add(alerts)
    router.add(route("#"))
    assert router.route("vigil/data/dev-1") is shared
    assert router.route("vigil/data/dev-1") is shared  # cached
    assert router.route("vigil/alerts/dev-1/r") is alerts
    assert router.route("$SYS/broker/uptime") is None  # "#" does not match $ topics
    other = route("vigil/data/dev-1")
    router.add(other)  # a new subscription empties the cache; the first still wins
    assert router.route("vigil/data/dev-1") is shared


def test_collect_splits_runs_in_arrival_order():
    router = Router()
    data, rules = route("vigil/data/#"), route("vigil/config/rules")
    router.add(data)
    router.add(rules)
    topics = ["vigil/data/a", "vigil/data/b", "vigil/config/rules", "vigil/data/c", "nobody"]
    wire = b"".join(publish_packet(t, t.encode(), i + 1) for i, t in enumerate(topics))
    wire += mqtt5.PubAckPacket(3).write()
    runs, control = collect(decode(wire).packets, router, connection=4)
    assert [(r, [m.topic for m in ms]) for r, ms in runs] == [
        (data, ["vigil/data/a", "vigil/data/b"]),
        (rules, ["vigil/config/rules"]),
        (data, ["vigil/data/c"]),
        (None, ["nobody"]),
    ]
    first = runs[0][1][0]
    assert first == Message("vigil/data/a", b"vigil/data/a", 1, 1, False, 4)
    assert [type(p) for p in control] == [mqtt5.PubAckPacket]


def test_encode_acks_writes_one_puback_per_id():
    out = decode(encode_acks([1, 65535, 7]))
    assert [(type(p), p.packet_id) for p in out.packets] == [
        (mqtt5.PubAckPacket, i) for i in (1, 65535, 7)
    ]


# -- against Mosquitto ---------------------------------------------------------------------
def fast(broker, user: str, client_id: str | None = None, **kw) -> FastMqttClient:
    client = FastMqttClient(broker.settings, broker.ident(user, client_id), **kw)
    return client


def started(client: FastMqttClient) -> FastMqttClient:
    client.start()
    assert client.wait_connected(10), "could not connect"
    return client


@pytest.mark.integration
def test_batches_arrive_in_order_and_manual_acks_settle_them(broker):
    got: list[Message] = []
    calls: list[int] = []
    lock = threading.Lock()

    def handler(msgs: list[Message]) -> None:
        with lock:
            got.extend(msgs)
            calls.append(len(msgs))

    client = fast(broker, "vigil-ingest", persistent_session=True, manual_ack=True)
    client.subscribe_batch("vigil/data/#", handler)
    started(client)
    assert client.subscribed.wait(10)
    device = connected(broker.settings, broker.ident("dev-1"))
    try:
        # fewer than the broker keeps in flight to one client (max_inflight_messages)
        infos = [device.publish("vigil/data/dev-1", str(i).encode(), qos=1) for i in range(900)]
        for info in infos:
            info.wait_for_publish(10)
        wait_until(lambda: len(got) == 900, what=f"900 messages (got {len(got)})")
        assert [int(m.payload) for m in got] == list(range(900))
        assert max(calls) > 1, "a read brought one message at a time"
        assert client.ack_many((m.mid, m.qos, m.connection) for m in got[:500]) == 500
    finally:
        device.stop()
        client.stop()
    # What was not acknowledged comes again to the resumed session; what was, does not.
    again: list[Message] = []
    client = fast(broker, "vigil-ingest", persistent_session=True, manual_ack=True)
    client.subscribe_batch("vigil/data/#", again.extend)
    started(client)
    try:
        wait_until(lambda: len(again) >= 400, what=f"the 400 unacknowledged (got {len(again)})")
        time.sleep(0.5)  # and nothing more
        assert sorted(int(m.payload) for m in again) == list(range(500, 900))
        assert all(m.connection == 1 for m in again)
        assert client.ack_many((m.mid, m.qos, 0) for m in again) == 0  # an earlier connection
        assert client.ack(again[0].mid, 1, connection=0) is False
        client.ack_many((m.mid, m.qos, m.connection) for m in again)
    finally:
        client.stop(end_session=True)


@pytest.mark.integration
def test_a_shared_subscription_splits_the_stream_between_members(broker):
    seen: dict[str, list[bytes]] = {"vigil-ingest-1": [], "vigil-ingest-2": []}
    members = []
    for user, box in seen.items():
        c = fast(broker, user, persistent_session=True)
        c.subscribe_batch(
            "$share/ingest/vigil/data/#", lambda ms, box=box: box.extend(m.payload for m in ms)
        )
        members.append(started(c))
        assert c.subscribed.wait(10)
    device = connected(broker.settings, broker.ident("dev-2"))
    try:
        for i in range(400):
            device.publish_wait("vigil/data/dev-2", b"%d" % i)
        wait_until(lambda: sum(map(len, seen.values())) == 400, what=f"400 in all ({seen})")
        both = seen["vigil-ingest-1"] + seen["vigil-ingest-2"]
        assert sorted(int(p) for p in both) == list(range(400))  # each once, by someone
        assert all(seen.values()), "one member got nothing"
    finally:
        device.stop()
        for c in members:
            c.stop(end_session=True)


@pytest.mark.integration
def test_a_refused_publish_raises_and_the_client_goes_on(broker):
    client = started(fast(broker, "vigil-alert-engine"))
    try:
        with pytest.raises(PublishError, match="refused by the broker: Not authorized"):
            client.publish_wait("vigil/data/dev-1", b"forged", timeout=10)
        client.publish_wait("vigil/alerts/dev-1/r", b"fine", timeout=10)
        info = client.publish("vigil/alerts/dev-1/r", b"x", qos=0)
        assert info.is_published()
    finally:
        client.stop()


@pytest.mark.integration
def test_a_wrong_password_is_refused_and_logged_once(broker, tmp_path, caplog):
    bad = tmp_path / "bad.password"
    bad.write_text("not-it")
    client = FastMqttClient(
        broker.settings,
        MqttClientSettings(client_id="vigil-ingest", username="vigil-ingest", password_file=bad),
    )
    client.start()
    try:
        wait_until(lambda: "refused vigil-ingest" in caplog.text, what="the refusal logged")
        assert not client.connected
    finally:
        client.stop()
    assert caplog.text.count("refused vigil-ingest") == 1


class GarbageBroker:
    """Accepts MQTT connections, answers CONNACK, then sends ``after`` (bytes no broker
    sends); counts the connections."""

    def __init__(self, after: bytes) -> None:
        self.after = after
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.recv(4096)  # CONNECT
            conn.sendall(mqtt5.ConnAckPacket().write())
            time.sleep(0.3)  # connected, then the garbage
            conn.sendall(self.after)

    def close(self) -> None:
        self.sock.close()


def test_garbage_from_the_broker_drops_the_connection_not_the_client(caplog):
    garbage = GarbageBroker(bytes([0x30, 0x05, 0x00, 0x09, 0x61]) + b"\xff" * 40)
    client = FastMqttClient(
        BrokerSettings(host="127.0.0.1", port=garbage.port, keepalive_s=5),
        MqttClientSettings(client_id="c", username="c"),
    )
    got: list[Message] = []
    client.subscribe_batch("#", got.extend)
    client.start()
    try:
        wait_until(lambda: garbage.connections >= 2, timeout=15, what="a reconnect")
        assert "disconnected from broker" in caplog.text
        assert "malformed packet" in caplog.text
        assert got == []
    finally:
        client.stop()
        garbage.close()


class MuteBroker:
    """Answers CONNACK, then reads (keeping what it read) and never closes the connection."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.recv(4096)  # CONNECT
        conn.sendall(mqtt5.ConnAckPacket().write())
        while data := conn.recv(4096):
            self.received += data
        time.sleep(60)  # EOF seen; still does not close

    def close(self) -> None:
        self.sock.close()


def test_stop_sends_disconnect_and_gives_up_on_a_broker_that_never_closes():
    mute = MuteBroker()
    client = FastMqttClient(
        BrokerSettings(host="127.0.0.1", port=mute.port, keepalive_s=30),
        MqttClientSettings(client_id="c", username="c"),
    )
    started(client)
    began = time.monotonic()
    try:
        client.stop(timeout=0.5)
        took = time.monotonic() - began
    finally:
        mute.close()
    assert took < 5, f"stop took {took:.1f}s"
    packets = decode(bytes(mute.received)).packets
    assert [type(p) for p in packets] == [mqtt5.DisconnectPacket]
    assert not client.connected
    assert not any(t.is_alive() for t in client._threads), "the reader was left behind"
