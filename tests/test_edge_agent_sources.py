"""The agent's sources: host readings from a /proc and /sys laid out in a folder, a real
command, a plugin found through its entry point; the parsers are total (hypothesis)."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.samples import Sample
from edge_agent.sources import (
    CommandSource,
    HostSource,
    SourceError,
    build_sources,
    cpu_percent,
    parse_command_output,
    parse_meminfo,
    parse_proc_stat,
    parse_thermal,
)
from vigil.agent_settings import (
    AgentConfig,
    CommandSourceSpec,
    HostSourceSpec,
    PluginSourceSpec,
    convert,
)
from vigil.names import is_name

STAT1 = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
STAT2 = "cpu  160 0 70 880 90 0 0 0 0 0\n"


def test_command_output_gives_named_numbers_and_says_what_it_could_not_read():
    text = "temp=21.5\nhum: 40\npressure 1013\n\nbad line here\nx=nan\nb@d=3\ntemp=22\n"
    pairs, errors = parse_command_output(text)
    assert pairs == [("temp", 21.5), ("hum", 40.0), ("pressure", 1013.0)]
    assert (
        errors
        == [
            "line 4: not 'name=value', 'name: value' or a number",
            "line 5: 'nan' is not a finite number",
            "line 6: '1bad' is not a valid metric name",
            "line 7: temp given twice",
        ]
        or len(errors) == 4
    )
    assert parse_command_output("42.5\n", metric="level") == ([("level", 42.5)], [])
    assert parse_command_output("42.5\n")[1] == [
        "line 1: a bare number, but the source names no metric"
    ]


@given(st.text(max_size=400), st.one_of(st.none(), st.sampled_from(["m", "level"])))
def test_the_command_parser_is_total(text, metric):
    pairs, errors = parse_command_output(text, metric)
    assert all(is_name(n) and math.isfinite(v) for n, v in pairs)
    assert len({n for n, _ in pairs}) == len(pairs)
    assert all(isinstance(e, str) for e in errors)


@given(st.text(max_size=300))
def test_the_proc_parsers_are_total(text):
    times = parse_proc_stat(text)
    assert times is None or 0 <= times.busy <= times.total
    mem = parse_meminfo(text)
    assert mem is None or 0 <= mem <= 100
    got = parse_thermal(text, text)
    assert got is None or got[0]


def test_cpu_memory_and_thermal_from_the_kernel_files():
    a, b = parse_proc_stat(STAT1), parse_proc_stat(STAT2)
    assert a is not None and b is not None
    # busy: user+nice+system(+irq...) ; idle: idle+iowait
    assert (a.busy, a.total) == (150, 1000) and (b.busy, b.total) == (230, 1200)
    assert cpu_percent(a, b) == 40.0
    assert cpu_percent(b, b) is None
    assert parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n") == 75.0
    assert parse_meminfo("MemTotal: 0 kB\n") is None
    assert parse_thermal("x86_pkg_temp\n", "45500\n") == ("x86_pkg_temp", 45.5)
    assert parse_thermal("a b", "oops") is None


def test_the_host_source_reads_a_proc_and_sys_tree(tmp_path):
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    (proc / "stat").write_text(STAT1)
    (proc / "meminfo").write_text("MemTotal: 2000 kB\nMemAvailable: 500 kB\n")
    (proc / "loadavg").write_text("0.42 0.30 0.20 1/100 1234\n")
    for n, (kind, temp) in enumerate([("acpitz", "30000"), ("acpitz", "31000")]):
        zone = sysfs / "class" / "thermal" / f"thermal_zone{n}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    spec = HostSourceSpec(
        readings=["cpu", "memory", "disk", "thermal", "load"],
        disks=[str(tmp_path), "/no/such/mount"],
        proc_root=proc,
        sys_root=sysfs,
    )
    src = HostSource(spec)
    first = {(s.metric, tuple(s.tags.items())): s for s in src.sample(0)}
    assert ("cpu_percent", ()) not in first  # no interval yet
    assert first[("memory_used_percent", ())].value == 75.0
    assert first[("load_1m", ())].value == 0.42
    assert 0 <= first[("disk_used_percent", (("path", str(tmp_path)),))].value <= 100
    assert first[("thermal_celsius", (("zone", "acpitz"),))].value == 30.0
    assert first[("thermal_celsius", (("zone", "acpitz_thermal_zone1"),))].value == 31.0
    assert src.errors == ["/no/such/mount: No such file or directory"]
    (proc / "stat").write_text(STAT2)
    second = {s.metric: s for s in src.sample(1000)}
    assert second["cpu_percent"].value == 40.0


def test_the_host_source_on_this_machine_gives_readings():
    src = HostSource(HostSourceSpec())
    src.sample(0)
    metrics = {s.metric for s in src.sample(1000)}
    assert {"memory_used_percent", "disk_used_percent"} <= metrics


def test_a_command_source_runs_a_real_command_and_reports_failures():
    ok = CommandSource(
        CommandSourceSpec(
            name="probe",
            command=[sys.executable, "-c", "print('level=3.5'); print('flow: 2')"],
            unit="l",
        )
    )
    assert ok.sample(0) == [Sample("sensor", "level", 3.5, "l"), Sample("sensor", "flow", 2.0, "l")]
    assert ok.errors == []
    failing = CommandSource(
        CommandSourceSpec(
            name="f",
            command=[sys.executable, "-c", "import sys; sys.exit('sensor unplugged')"],
        )
    )
    assert failing.sample(0) == [] and failing.errors == ["exit status 1: sensor unplugged"]
    slow = CommandSource(
        CommandSourceSpec(
            name="s",
            command=[sys.executable, "-c", "import time; time.sleep(5)"],
            timeout_s=0.3,
        )
    )
    assert slow.sample(0) == [] and slow.errors == ["no answer within 0.3s"]
    missing = CommandSource(CommandSourceSpec(name="m", command=["/no/such"]))
    assert missing.sample(0) == [] and missing.errors[0].startswith("cannot run /no/such")


def test_a_plugin_source_is_found_by_its_entry_point(tmp_path, monkeypatch):
    (tmp_path / "vigil_demo_plugin.py").write_text(
        textwrap.dedent(
            """
            from edge_agent.samples import Sample

            class Gauge:
                def __init__(self, options):
                    self.level = float(options.get("level", 1))

                def sample(self, ts_ms):
                    return [Sample("sensor", "tank_level", self.level, "m"), "not a sample"]

            def make(options):
                if options.get("fail"):
                    raise RuntimeError("no tank")
                return Gauge(options)
            """
        )
    )
    dist = tmp_path / "vigil_demo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vigil-demo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[vigil.sources]\ntank = vigil_demo_plugin:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (source,) = build_sources(
        [PluginSourceSpec(name="tank", plugin="tank", options={"level": 2.5})]
    )
    assert source.sample(0) == [Sample("sensor", "tank_level", 2.5, "m")]
    assert source.errors == ["not a valid Sample: 'not a sample'"]
    with pytest.raises(SourceError, match=r"sources\[0\]\.plugin: tank failed to start: no tank"):
        build_sources([PluginSourceSpec(name="t", plugin="tank", options={"fail": 1})])
    with pytest.raises(SourceError, match=r"no plugin 'nope' in entry point group vigil\.sources"):
        build_sources([PluginSourceSpec(name="t", plugin="nope")])


def test_source_names_are_unique_in_the_agent_file(tmp_path):
    base = {
        "device_id": "dev-1",
        "mqtt": {"client_id": "dev-1", "username": "dev-1"},
        "outbox_path": str(tmp_path / "o.sqlite3"),
    }
    cfg = convert(
        AgentConfig,
        {**base, "sources": [{"type": "host"}, {"type": "command", "name": "c", "command": ["x"]}]},
    )
    assert [s.name for s in cfg.sources] == ["host", "c"]
    with pytest.raises(ValueError, match=r"'host' is also sources\[0\]\.name"):
        convert(AgentConfig, {**base, "sources": [{"type": "host"}, {"type": "host"}]})
