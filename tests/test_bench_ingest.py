"""The ingest benchmark's pure helpers (the bench itself runs in ``make bench``)."""

from __future__ import annotations

from bench.ingest import top_frames, versus


def test_top_frames_ranks_self_time_and_skips_what_is_not_a_sample():
    raw = [
        "main (a.py:1);parse (b.py:2) 30",
        "main (a.py:1);write (c.py:3) 75",
        "main (a.py:1);parse (b.py:2) 20\n",
        "garbage",
        "main (a.py:1) notanumber",
        "",
    ]
    assert top_frames(raw) == [("write (c.py:3)", 0.6), ("parse (b.py:2)", 0.4)]
    assert top_frames(raw, n=1) == [("write (c.py:3)", 0.6)]
    assert top_frames([]) == [] and top_frames(["x"]) == []


def test_versus_says_met_or_by_how_much_it_falls_short():
    assert versus(30_000, 23_000) == "met"
    assert versus(11_500, 23_000) == "short: 0.50 x the target"
    assert versus(20.0, 25.0, higher_is_better=False) == "met"
    assert versus(50.0, 25.0, higher_is_better=False) == "short: 0.50 x the target"
    assert versus(None, 1.0) == "not measured"
