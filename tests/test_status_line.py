"""The live terminal of `make run`, pure: totals from the processes' scrapes (ingest members
summed, a process that did not answer shown as '-'), rates against the previous round (none
after a restart), one compact line."""

from __future__ import annotations

from stack.status_line import format_line, summarize


def k(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def ingest(received: float, stored: float, hints: float) -> dict:
    return {
        k("vigil_messages_in_total", service="ingest_service"): received,
        k("vigil_messages_out_total", service="ingest_service"): stored,
        k("vigil_dead_letters_total", service="ingest_service"): 1,
        k("vigil_storage_hint_points", service="ingest_service", server="influx-2"): hints,
    }


API = {
    k("vigil_storage_server_up", service="api", server=s): v
    for s, v in (("influx-1", 1), ("influx-2", 0), ("influx-3", 1))
}


def test_a_round_is_summed_over_the_members_and_rated_against_the_last():
    first = summarize(
        {"ingest-1": ingest(100, 90, 5), "ingest-2": ingest(50, 60, 0), "api": API,
         "alert_engine": {k("vigil_alerts_firing", service="alert_engine"): 2},
         "notifier": {k("vigil_messages_out_total", service="notifier"): 7}},
        1000.0,
    )  # fmt: skip
    assert (first.received, first.stored, first.dead_letters, first.hints) == (150, 150, 2, 5)
    assert (first.servers_up, first.servers, first.alerts_firing, first.emails) == (2, 3, 2, 7)
    line = format_line(first, None)
    assert "in …  stored …" in line and "servers 2/3" in line and "hints 5" in line
    second = summarize(
        {"ingest-1": ingest(150, 140, 0), "ingest-2": ingest(100, 110, 0), "api": API,
         "alert_engine": None, "notifier": None},
        1005.0,
    )  # fmt: skip
    line = format_line(second, first)
    assert "in 20.0/s  stored 20.0/s  dead 2  firing -  emails -" in line
    restarted = summarize({"ingest-1": ingest(3, 3, 0), "ingest-2": None}, 1010.0)
    assert "in …  stored …" in format_line(restarted, second)  # counters began again
    assert "servers -" in format_line(restarted, second)  # the API did not answer
