"""Any configuration file, and any environment override, gives a valid configuration or a
ConfigError naming the file and a key (or a line and column), never another exception
(hypothesis). ``CORPUS`` keeps, as explicit cases, the inputs that once broke: a traceback,
or a file accepted although plainly wrong."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil.agent_settings import load_agent_config
from vigil.config_core import ConfigError
from vigil.settings import load_config

ROOT = Path(__file__).resolve().parent.parent
CLOUD = ROOT / "config/vigil.yaml"
AGENT = ROOT / "config/agents/demo-1.yaml"
Loader = Callable[..., Any]

FUZZ = settings(
    max_examples=int(os.environ.get("VIGIL_FUZZ_EXAMPLES", "150")),  # more for a long hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config-fuzz")


def outcome(path: Path, loader: Loader, environ: dict[str, str] | None = None) -> str:
    """``ok``, or the ConfigError's message after checking it names the file and a key."""
    try:
        loader(path, environ=environ or {})
    except ConfigError as exc:
        assert exc.key, f"no key in {exc}"
        assert str(exc).startswith(f"{path}: {exc.key}: "), str(exc)
        assert exc.reason.strip(), str(exc)
        return str(exc)
    return "ok"


# -- strategies ----------------------------------------------------------------------------
leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(
        ["0.0.0.0", "http://127.0.0.1:8086/", "vigil-ingest", "demo-1\n", "", "1883", "a@b"]
    )
)
junk = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.none(), inner, max_size=3)
    ),
    max_leaves=6,
)
YAML_CHARS = "&*!|>-:?[]{},#'\"\n\t %@`\\~.0123456789abc\x00\x85\ufeff"


def paths_in(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a parsed YAML tree, the root's children first."""
    found = []
    items = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list)
        else []
    )
    for key, value in items:
        found.append((*prefix, key))
        found.extend(paths_in(value, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn, source: Path) -> Any:
    """The parsed ``source`` with a few values replaced, keys removed or keys added."""
    tree = copy.deepcopy(yaml.safe_load(source.read_text()))
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_in(tree)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = tree
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(junk)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8) | st.integers() | st.booleans())] = draw(junk)
        else:
            parent.append(draw(junk))
    return tree


def write(workdir: Path, content: bytes | str, name: str = "config.yaml") -> Path:
    path = workdir / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


# -- the fuzz ------------------------------------------------------------------------------
@FUZZ
@given(content=st.binary(max_size=600))
def test_arbitrary_bytes(workdir, content):
    path = write(workdir, content)
    outcome(path, load_config)
    outcome(path, load_agent_config)


@FUZZ
@given(
    source=st.sampled_from([CLOUD, AGENT]),
    at=st.floats(0, 1),
    cut=st.integers(0, 40),
    insert=st.text(alphabet=YAML_CHARS, max_size=30),
)
def test_the_committed_files_with_a_span_rewritten(workdir, source, at, cut, insert):
    text = source.read_text()
    i = int(at * len(text))
    path = write(workdir, text[:i] + insert + text[i + cut :])
    outcome(path, load_config if source == CLOUD else load_agent_config)


@FUZZ
@given(data=st.data(), source=st.sampled_from([CLOUD, AGENT]))
def test_yaml_trees_with_mutated_values_and_keys(workdir, data, source):
    tree = data.draw(mutated(source))
    path = write(workdir, yaml.safe_dump(tree, allow_unicode=data.draw(st.booleans())))
    outcome(path, load_config if source == CLOUD else load_agent_config)


KNOWN_KEYS = sorted({str(p[-1]) for p in paths_in(yaml.safe_load(CLOUD.read_text()))})


@FUZZ
@given(
    overrides=st.dictionaries(
        st.lists(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), min_size=1, max_size=4).map(
            lambda keys: "VIGIL__" + "__".join(keys).upper()
        ),
        st.sampled_from(["true", "0", "-1", "'8000'", "[1", "{a: 1}", "~", ".nan", "1e400"])
        | st.text(alphabet=YAML_CHARS, max_size=20),
        max_size=3,
    )
)
def test_environment_overrides(overrides):
    outcome(CLOUD, load_config, overrides)


# -- what once broke ------------------------------------------------------------------------
def _cloud_with(old: str, new: str) -> bytes:
    text = CLOUD.read_text()
    assert old in text, old
    return text.replace(old, new, 1).encode()


def _agent_with(old: str, new: str) -> bytes:
    text = AGENT.read_text()
    assert old in text, old
    return text.replace(old, new, 1).encode()


CORPUS = [
    # (id, loader, content, environment, the key, part of the reason)
    ("latin-1", "cloud", b"broker: {host: caf\xe9}\n", {}, "line 1, column 19", "not UTF-8"),
    ("utf-16", "cloud", "broker: {}\n".encode("utf-16"), {}, "line 1, column 1", "not UTF-8"),
    ("deep-nesting", "cloud", b"a: " + b"[" * 100_000, {}, "line 1, column 35", "deeper than"),
    (
        "billion-laughs",
        "cloud",
        b"a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
        b"e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
        {},
        "line 5, column 4",
        "more than 50000 values",
    ),
    ("bad-date", "cloud", b"broker: 2001-02-30\n", {}, "line 1, column 9", "day is out of range"),
    ("int-tag", "cloud", b"broker: !!int zz\n", {}, "line 1, column 9", "cannot read this value"),
    ("huge-int", "cloud", b"broker: " + b"9" * 5000 + b"\n", {}, "line 1, column 9", "cannot read"),
    ("top-level-false", "cloud", b"0\n", {}, "(top level)", "must be a mapping"),
    ("bool-key", "agent", b"on: 1\n", {}, "(top level)", "key True is not a string"),
    (
        "device-id-newline",
        "cloud",
        _cloud_with("id: demo-2,", 'id: "demo-2\\n",'),
        {},
        "devices[1].id",
        "is not a valid name",
    ),
    (
        "device-is-a-service",
        "cloud",
        _cloud_with("id: demo-2,", "id: vigil-notifier,"),
        {},
        "devices[1].id",
        "reserved for Vigil's own broker users",
    ),
    (
        "starttls-and-tls",
        "cloud",
        _cloud_with(
            "sender: vigil@localhost}", "sender: vigil@localhost, starttls: true, use_tls: true}"
        ),
        {},
        "notifier.smtp.starttls",
        "cannot be combined with use_tls",
    ),
    (
        "port-true",
        "cloud",
        _cloud_with("port: 8000", "port: true"),
        {},
        "api.port",
        "valid integer, not a boolean",
    ),
    (
        "one-url-three-times",
        "cloud",
        _cloud_with("8087", "8086").replace(b"8089", b"8086/"),
        {},
        "storage.nodes[1].url",
        "is the same server as nodes[0].url",
    ),
    (
        "duplicate-devices",
        "cloud",
        _cloud_with("id: demo-3,", "id: demo-1,"),
        {},
        "devices[2].id",
        "is also devices[0].id",
    ),
    (
        "agent-with-ingest-client-id",
        "agent",
        _agent_with("client_id: demo-1", "client_id: vigil-ingest"),
        {},
        "mqtt.client_id",
        "must be the device id 'demo-1'",
    ),
    (
        "two-services-one-metrics-port",
        "cloud",
        _cloud_with("metrics_port: 9103", "metrics_port: 9102"),
        {},
        "notifier.metrics_port",
        "is also alert_engine.metrics_port",
    ),
    (
        "surrogate-in-a-path",
        "agent",
        _agent_with("outbox_path: .vigil/agents/demo-1/outbox.sqlite3", 'outbox_path: "\\ud800"'),
        {},
        "outbox_path",
        "is not a file path",
    ),
    (
        "env-stray-separator",
        "cloud",
        CLOUD.read_bytes(),
        {"VIGIL__API__": "1"},
        "VIGIL__API__",
        "empty key",
    ),
    (
        "env-deep-value",
        "cloud",
        CLOUD.read_bytes(),
        {"VIGIL__BROKER__HOST": "[" * 10_000},
        "broker.host",
        "not a host name",
    ),
    (
        "env-into-a-scalar",
        "cloud",
        CLOUD.read_bytes(),
        {"VIGIL__API__PORT__X": "1"},
        "api.port",
        "valid integer",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case[0]) for case in CORPUS])
def test_what_once_broke(tmp_path, case):
    _, loader, content, environ, key, reason = case
    path = write(tmp_path, content)
    message = outcome(path, load_config if loader == "cloud" else load_agent_config, environ)
    assert message.startswith(f"{path}: {key}: "), message
    assert reason in message, message
