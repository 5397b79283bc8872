"""vigil.atomic.write_atomic: readers see the old file or the new, never part of one."""

from __future__ import annotations

import json
import stat
import threading

from vigil.atomic import write_atomic


def test_writes_content_and_mode_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "state.json"
    write_atomic(target, '{"a": 1}\n', mode=0o640)
    assert target.read_text() == '{"a": 1}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_concurrent_reader_never_sees_a_partial_file(tmp_path):
    target = tmp_path / "stack.json"
    write_atomic(target, json.dumps({"n": 0, "pad": "x" * 200_000}))
    stop = threading.Event()
    seen: list[int] = []
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            text = target.read_text()
            try:
                seen.append(json.loads(text)["n"])
            except ValueError:
                bad.append(text[:80])

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(1, 200):
        write_atomic(target, json.dumps({"n": n, "pad": "x" * (200_000 + n)}))
    stop.set()
    reader.join()
    assert bad == []
    assert seen and seen == sorted(seen)  # only whole versions, in order


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "config.yaml"
    write_atomic(target, "old")

    try:
        write_atomic(target, 12345)  # type: ignore[arg-type]
    except TypeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("expected a TypeError")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
