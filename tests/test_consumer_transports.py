"""The consumer runtime on both transports (vigil.fastmqtt and paho), against a real
Mosquitto: batches by count, acknowledgement only after the handler's durable step,
redelivery of what was not durable to the resumed session, readiness; and the hand-off's
bound."""

from __future__ import annotations

import threading
import time

import pytest
from support import connected, wait_until

from vigil.consumer import Consumer, Handoff, Received
from vigil.metrics import ServiceMetrics
from vigil.readiness import Readiness, is_ready, read_ready
from vigil.topicfilter import TopicFilter


def consumer(broker, tmp_path, transport: str, handler) -> Consumer:
    return Consumer(
        broker.settings,
        broker.ident("vigil-ingest"),
        service="ingest_service",
        subscriptions=["vigil/data/#"],
        handler=handler,
        batch_max=100,
        linger_s=0.05,
        receive_maximum=500,
        metrics=ServiceMetrics("ingest_service", "store"),
        readiness=Readiness("ingest_service", tmp_path / f"{transport}.ready"),
        transport=transport,  # type: ignore[arg-type]
    )


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["fast", "paho"])
def test_only_what_the_handler_made_durable_is_acknowledged(broker, tmp_path, transport):
    batches: list[list[Received]] = []
    durable = threading.Event()
    durable.set()

    def handler(batch: list[Received]) -> bool:
        batches.append(batch)
        return durable.is_set()

    c = consumer(broker, tmp_path, transport, handler)
    c.start()
    device = connected(broker.settings, broker.ident("dev-1"))
    try:
        wait_until(
            lambda: (s := read_ready(tmp_path / f"{transport}.ready")) is not None and s.ready,
            what="the ready file",
        )
        infos = [device.publish("vigil/data/dev-1", b"%d" % i, qos=1) for i in range(300)]
        for info in infos:
            info.wait_for_publish(10)
        wait_until(lambda: sum(map(len, batches)) == 300, what="300 handled")
        assert all(len(b) <= 100 for b in batches)
        assert [int(m.payload) for b in batches for m in b] == list(range(300))
        assert {m.subscription for b in batches for m in b} == {TopicFilter.parse("vigil/data/#")}
        wait_until(lambda: c.drained(0.2), what="drained")

        durable.clear()  # the next ones are handled, never durable: never acknowledged
        for i in range(300, 350):
            device.publish_wait("vigil/data/dev-1", b"%d" % i)
        wait_until(lambda: sum(map(len, batches)) >= 350, what="350 handled")
    finally:
        c.stop()
        device.stop()
    ready = read_ready(tmp_path / f"{transport}.ready")
    assert ready is not None and not ready.ready

    again: list[Received] = []
    c = consumer(broker, tmp_path, transport, lambda b: again.extend(b) or True)
    c.start()
    try:
        wait_until(lambda: len(again) >= 50, what=f"the 50 not durable again (got {len(again)})")
        time.sleep(0.5)  # and none of the 300 acknowledged
        assert sorted(int(m.payload) for m in again) == list(range(300, 350))
    finally:
        c.stop(end_session=True)


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["fast", "paho"])
def test_a_stop_lets_the_batch_in_hand_finish_and_tells_a_stuck_one_to_give_up(
    broker, tmp_path, transport
):
    """A stop does not cut a batch between its effects and its acknowledgement: the handler
    in progress finishes as usual and its batch is acknowledged. One still waiting after the
    grace period sees ``stopping``; what it held is redelivered."""
    entered, saw_stopping = threading.Event(), []

    def finishes(batch: list[Received]) -> bool:
        entered.set()
        time.sleep(0.5)  # a publish the broker confirms a moment later
        saw_stopping.append(c.stopping.is_set())
        return not c.stopping.is_set()

    c = consumer(broker, tmp_path, transport, finishes)
    c.start()
    device = connected(broker.settings, broker.ident("dev-1"))
    try:
        wait_until(lambda: is_ready(tmp_path / f"{transport}.ready"), what="ready")
        device.publish_wait("vigil/data/dev-1", b"1")
        assert entered.wait(10)
        c.stop(grace_s=5.0)
        assert saw_stopping == [False]  # it finished before the grace ran out

        def stuck(batch: list[Received]) -> bool:
            entered.set()
            c.stopping.wait(30)  # a broker that is away: only the stop ends the wait
            return False

        entered.clear()
        c = consumer(broker, tmp_path, transport, stuck)
        c.start()
        wait_until(lambda: is_ready(tmp_path / f"{transport}.ready"), what="ready again")
        device.publish_wait("vigil/data/dev-1", b"2")
        assert entered.wait(10)
        t0 = time.monotonic()
        c.stop(grace_s=0.3)
        assert time.monotonic() - t0 < 5
    finally:
        device.stop()

    again: list[Received] = []
    c = consumer(broker, tmp_path, transport, lambda b: again.extend(b) or True)
    c.start()
    try:
        wait_until(lambda: again, what="the stuck batch again")
        time.sleep(0.5)  # and not the one that finished: it was acknowledged
        assert [m.payload for m in again] == [b"2"]
    finally:
        c.stop(end_session=True)


def received(n: int) -> Received:
    return Received("t", b"", 1, n, 1, 0, TopicFilter.parse("#"))


def mids(lists: list[list[Received]]) -> list[int]:
    return [m.mid for items in lists for m in items]


def test_the_handoff_holds_its_bound_and_gives_up_when_stopping():
    stopping = threading.Event()
    h = Handoff(3, stopping)
    assert h.put([received(1), received(2)]) and h.put([received(3), received(4)])
    assert len(h) == 4  # one list may take it past the bound
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(h.put([received(5)])))
    t.start()
    time.sleep(0.3)
    assert done == []  # waiting for room
    assert mids(h.take(1, 0.1)) == [1, 2, 3, 4]  # everything waiting, oldest first
    t.join(2)
    assert done == [True] and len(h) == 1
    assert h.put([received(6), received(7)]) and len(h) == 3
    t = threading.Thread(target=lambda: done.append(h.put([received(8)])))
    t.start()
    stopping.set()
    t.join(2)
    assert done == [True, False] and len(h) == 3  # dropped: it was never acknowledged
    assert mids(h.take(1, 0.0)) == [5, 6, 7]
    assert h.take(1, 0.05) == [] and len(h) == 0


def test_the_handoff_wakes_the_worker_only_when_what_it_wants_is_there():
    h = Handoff(100, threading.Event())
    got: list[list[list[Received]]] = []
    t = threading.Thread(target=lambda: got.append(h.take(5, 5.0)))
    t.start()
    for n in range(4):
        assert h.put([received(n)])
    time.sleep(0.2)
    assert got == []  # four of the five it waits for: still asleep
    assert h.put([received(4), received(5)])
    t.join(2)
    assert [mids(g) for g in got] == [[0, 1, 2, 3, 4, 5]]
    # after the timeout it takes what there is; want is capped by the bound
    assert h.put([received(6)])
    t0 = time.monotonic()
    assert mids(h.take(50, 0.1)) == [6] and time.monotonic() - t0 >= 0.09
    small = Handoff(2, threading.Event())
    assert small.put([received(1), received(2)])
    assert mids(small.take(1000, 5.0)) == [1, 2]  # 2 is all the bound lets in: no wait
