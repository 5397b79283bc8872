"""Fuzzing the whole API: every route of the app's url_map, with every method, arbitrary path
segments (text and percent-encoded bytes), query strings, headers and bodies, with and
without a valid token, against real storage holding a series (the ``stored`` fixture), so
data routes really query InfluxDB.

What must hold for every request (:func:`check`): never a 500; no 502/503 while storage is
up; every 4xx/5xx is ``application/problem+json`` with ``type``, ``title``, ``status`` (the
HTTP status) and ``detail``; a 2xx that has a body is a JSON object. With storage really
unavailable, data routes answer 503 problems with ``Retry-After``.

The corpus at the end keeps each input that once broke the API (issue 6) as a plain case.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import STORED_T0

from api import close_app, create_app
from stack.process import free_port
from vigil.settings import StorageNode, StorageSettings

PROBLEM_JSON = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "detail"}
CONSOLE_TYPES = {"text/html", "text/javascript", "text/css", "text/plain", "image/svg+xml"}
#: Examples per fuzz test; VIGIL_FUZZ_EXAMPLES=5000 for a longer hunt.
EXAMPLES = int(os.environ.get("VIGIL_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
#: Names that exist (the stored series, a configured device), near-misses and junk.
NAMES = [
    "dev-1",
    "dev-2",
    "temperature",
    "humidity",
    "select",
    "hot",
    "a" * 64,
    "a" * 65,
    "temperature\n",
    "r\n",
    "-x",
    ".",
    "..",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=utf-16",
    "application/json;;;",
    "APPLICATION/JSON",
    "application/merge-patch+json",
    "application/problem+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "multipart/form-data",
    "",
]


# -- what every answer must be -------------------------------------------------------------
def check(resp: Any, method: str, *, storage_up: bool = True) -> None:
    """The invariants of every API answer (see the module docstring)."""
    status = resp.status_code
    text = resp.get_data(as_text=True)
    assert status != 500, text
    assert not 300 <= status < 400, (status, resp.headers)  # the API redirects nowhere
    if storage_up:
        assert status < 500, text
    else:
        assert status < 500 or status == 503, text
    if status >= 400:
        assert resp.mimetype == PROBLEM_JSON, (status, resp.mimetype, text[:300])
        if method != "HEAD":  # a HEAD answer has the headers of the GET, without the body
            body = json.loads(text)
            assert isinstance(body, dict) and set(body) >= PROBLEM_KEYS, body
            assert body["status"] == status and body["detail"], body
            assert isinstance(body["title"], str) and isinstance(body["type"], str)
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        if status == 405:
            assert resp.headers.get("Allow")
        if status == 503:
            assert resp.headers["Retry-After"].isdigit()
    elif method == "OPTIONS":
        assert status == 204 and resp.headers.get("Allow") and not text, (status, text[:300])
    elif 200 <= status < 300 and method != "HEAD" and status != 204:
        if resp.request.path == "/docs":  # the one page: HTML that reads /openapi.json
            assert resp.mimetype == "text/html" and "/openapi.json" in text
            return
        if resp.request.path.startswith("/console"):  # the web console's files
            assert resp.mimetype in CONSOLE_TYPES and resp.headers["Content-Security-Policy"]
            return
        if resp.mimetype == "text/event-stream":  # a live stream, ended (LIVE_STREAM_S)
            assert resp.request.path.endswith("/stream") and text.endswith("\n\n"), text[-300:]
            return
        assert resp.mimetype == "application/json", (status, resp.mimetype, text[:300])
        assert isinstance(json.loads(text), dict)


# -- requests --------------------------------------------------------------------------------
_ARG = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")


def routes(app: Any) -> list[tuple[str, list[str]]]:
    """Every route of the app as (rule, methods), e.g. ("/rules/<rule_id>", [...])."""
    return sorted((r.rule, sorted(r.methods or ())) for r in app.url_map.iter_rules())


def fill(rule: str, segments: list[str]) -> str:
    """``rule`` with each ``<arg>`` replaced by the next (already encoded) segment."""
    values = iter(segments)
    return _ARG.sub(lambda _m: next(values, "x"), rule)


def encoded(text: str) -> str:
    return quote(text, safe="", errors="surrogatepass")


latin1 = st.text(st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=60)
header_text = st.text(
    st.characters(min_codepoint=0, max_codepoint=0xFF, exclude_characters="\r\n"), max_size=80
)
segment = st.one_of(
    st.sampled_from(NAMES).map(encoded),
    st.text(max_size=80).map(encoded),
    st.binary(min_size=1, max_size=40).map(lambda b: "".join(f"%{c:02X}" for c in b)),
    st.integers(1, 5000).map(lambda n: "n" * n),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,70}", fullmatch=True),
)
number_text = st.one_of(
    st.integers().map(str),
    st.integers(0, 6000).map(lambda n: "9" * max(n, 1)),
    st.sampled_from(["0", "-0", "1e5", "1.5", "+1", " 1", "1 ", "1\n", "\u0661", "\uff11", ""]),
    st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
)
query_value = st.one_of(number_text, st.sampled_from(["asc", "desc", "ASC"]), latin1)
query_key = st.one_of(
    st.sampled_from(["n", "since", "until", "limit", "order"]), st.text(max_size=12)
)
query_string = st.one_of(
    st.just(""),
    st.lists(st.tuples(query_key, query_value), max_size=5).map(
        lambda pairs: urlencode(pairs, encoding="utf-8", errors="surrogatepass")
    ),
    st.binary(max_size=60).map(lambda b: "".join(f"%{c:02X}" for c in b)),
    st.sampled_from(["n", "&&&", "=", "n==1", "n=1;n=2", "%", "%zz", "n=%FF", "since=1&until=0"]),
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(10**19, 10**500),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from([*NAMES, "above", "below", "critical", "warning", "info"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
name_text = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", fullmatch=True)
valid_rule = st.fixed_dictionaries(
    {
        "metric": st.sampled_from(["temperature", "humidity"]) | name_text,
        "op": st.sampled_from(["above", "below"]),
        "threshold": st.integers(-(2**63), 2**63)
        | st.floats(allow_nan=False, allow_infinity=False),
    },
    optional={
        "id": name_text,
        "name": st.text(max_size=200),
        "device": st.sampled_from(["dev-1", "dev-2"]) | name_text | st.none(),
        "severity": st.sampled_from(["critical", "warning", "info"]),
    },
)


@st.composite
def mutated_rule(draw: st.DrawFn) -> dict[str, Any]:
    """A valid rule with one field replaced, dropped or added."""
    rule = dict(draw(valid_rule))
    key = draw(st.sampled_from([*rule, "id", "name", "device", "severity", "colour"]))
    if draw(st.booleans()):
        rule.pop(key, None)
    else:
        rule[key] = draw(st.sampled_from(NAMES) | json_value)
    return rule


rule_like = st.one_of(valid_rule, mutated_rule(), st.dictionaries(st.text(max_size=10), json_leaf))
json_content_type = st.one_of(
    st.just("application/json"),
    st.just("application/json; charset=utf-8"),
    st.sampled_from(CONTENT_TYPES),
    header_text,
)


def _raw_rule(number: str) -> bytes:
    return ('{"id":"n","metric":"t","op":"above","threshold":' + number + "}").encode()


body = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    rule_like.map(lambda r: json.dumps(r).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    number_text.map(_raw_rule),
    st.integers(1, 40_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 11_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    rule_like.map(lambda r: json.dumps(r).encode("utf-16")),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@st.composite
def requests(draw: st.DrawFn, app: Any) -> dict[str, Any]:
    """One arbitrary request: a route of the app (or any path), a method, a query, headers,
    a body; the Authorization header is left to the caller."""
    rule, allowed = draw(st.sampled_from(routes(app)))
    if draw(st.integers(0, 9)) == 0:
        # "//x" would be a host to the test client; a server sees it as a path ("/x/" below).
        path = "/x/" + "/".join(draw(st.lists(segment, max_size=6)))
    else:
        path = fill(rule, draw(st.lists(segment, min_size=3, max_size=3)))
    method = draw(
        st.one_of(
            st.sampled_from(allowed),
            st.sampled_from(METHODS),
            st.from_regex(r"[A-Z]{1,9}", fullmatch=True),
        )
    )
    qs = draw(query_string)
    headers = {"Content-Type": draw(json_content_type)}
    for name, value in draw(
        st.lists(st.tuples(st.from_regex(r"X-[A-Za-z0-9\-]{1,20}", fullmatch=True), header_text))
    ):
        headers[name] = value
    for name in draw(st.lists(st.sampled_from(["Accept", "Accept-Encoding", "Range", "If-Match"]))):
        headers[name] = draw(header_text)
    return {
        "path": path + ("?" + qs if qs else ""),
        "method": method,
        "headers": headers,
        "data": draw(body) if method not in ("GET", "HEAD") or draw(st.booleans()) else None,
    }


AUTH_KINDS = ["valid", "none", "unknown", "junk"]


def send(client: Any, token: str, req: dict[str, Any], auth: str, junk: str) -> Any:
    headers = dict(req["headers"])
    if auth == "valid":
        headers["Authorization"] = f"Bearer {token}"
    elif auth == "unknown":
        headers["Authorization"] = f"Bearer {token}x"
    elif auth == "junk":
        headers["Authorization"] = junk
    return client.open(req["path"], method=req["method"], headers=headers, data=req["data"] or b"")


# -- the fuzz tests --------------------------------------------------------------------------
def test_the_fuzzer_knows_every_route(app):
    """The routes fuzzed are the app's own: a new route is fuzzed without editing this file."""
    found = {rule for rule, _ in routes(app)}
    assert {"/health", "/devices", "/ring", "/rules", "/rules/<rule_id>"} <= found
    assert "/devices/<device>/metrics/<metric>/history" in found


@pytest.fixture
def fuzz_app(app, stored, cloud_config):
    """The app, storage holding the dev-1 temperature series, and the admin token."""
    app.config["LIVE_STREAM_S"] = 0.0  # a live stream answers one poll, then ends
    return app, cloud_config.admin_token


@FUZZ
@given(data=st.data())
def test_any_request_to_any_route(fuzz_app, data):
    app, token = fuzz_app
    req = data.draw(requests(app), label="request")
    auth = data.draw(st.sampled_from(AUTH_KINDS), label="auth")
    junk = data.draw(header_text, label="junk authorization")
    resp = send(app.test_client(), token, req, auth, junk)
    event(f"{auth} {req['method'] if req['method'] in METHODS else 'other'} {resp.status_code}")
    check(resp, req["method"])


QUERY_PARAMS = {
    "latest": [],
    "mean": ["n"],
    "history": ["since", "until", "limit", "order"],
    "replicas": [],
}
near_t0 = st.integers(STORED_T0 - 10_000, STORED_T0 + 10_000).map(str)
QUERY_VALUES = {
    "n": st.one_of(st.integers(0, 10_001).map(str), st.integers(1, 20).map(str), number_text),
    "limit": st.one_of(st.integers(0, 10_001).map(str), st.integers(1, 20).map(str), number_text),
    "since": st.one_of(near_t0, st.sampled_from(["0", "9223372036853"]), number_text),
    "until": st.one_of(near_t0, st.sampled_from(["0", "9223372036853"]), number_text),
    "order": st.one_of(st.sampled_from(["asc", "desc"]), query_value),
}


@FUZZ
@given(data=st.data())
def test_any_query_on_the_data_routes(fuzz_app, data):
    """Valid paths, so the query string is what is fuzzed, and the query really runs."""
    app, token = fuzz_app
    what = data.draw(st.sampled_from(list(QUERY_PARAMS)))
    device = data.draw(st.sampled_from(["dev-1", "dev-2", "dev-9"]))
    given_params = [name for name in QUERY_PARAMS[what] if data.draw(st.booleans(), label=name)]
    pairs = [(name, data.draw(QUERY_VALUES[name], label=name)) for name in given_params]
    if data.draw(st.integers(0, 9), label="extra?") == 9:  # hypothesis favours small ones
        pairs.append(data.draw(st.tuples(query_key, query_value), label="extra"))
    url = f"/devices/{device}/metrics/temperature/{what}?" + urlencode(pairs)
    client = app.test_client()
    resp = client.get(url, headers={"Authorization": f"Bearer {token}"})
    event(f"{what} {resp.status_code}")
    check(resp, "GET")
    if resp.status_code == 200 and what == "history":
        points = resp.get_json()["points"]
        assert all(isinstance(p["ts"], int) and isinstance(p["value"], float) for p in points)


@FUZZ
@given(body=body, content_type=json_content_type)
def test_any_body_to_post_rules(fuzz_app, body, content_type):
    app, token = fuzz_app
    client = app.test_client()
    resp = client.post(
        "/rules",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    event(f"status {resp.status_code}")
    check(resp, "POST")
    if resp.status_code == 201:
        rule_id = resp.get_json()["rule"]["id"]
        assert client.get(f"/rules/{rule_id}", headers={"Authorization": f"Bearer {token}"})
        check(client.get("/rules", headers={"Authorization": f"Bearer {token}"}), "GET")


@FUZZ
@given(rule=rule_like)
def test_any_rule_object(fuzz_app, rule):
    """Rule-shaped objects: each is created (201) or refused (400/409), and the list still
    reads afterwards."""
    app, token = fuzz_app
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    resp = client.post(
        "/rules", data=json.dumps(rule), headers=auth, content_type="application/json"
    )
    event(f"status {resp.status_code}")
    check(resp, "POST")
    assert resp.status_code in (201, 400, 409), resp.get_data(as_text=True)
    listed = client.get("/rules", headers=auth)
    check(listed, "GET")
    assert listed.status_code == 200


# -- storage really unavailable --------------------------------------------------------------
@pytest.fixture
def dead_storage_app(cloud_config):
    """The API with every storage server on a closed port."""
    dead = StorageSettings(
        database="vigil",
        replication_factor=2,
        timeout_s=2,
        nodes=[
            StorageNode(name=f"dead-{i}", url=f"http://127.0.0.1:{free_port()}") for i in range(3)
        ],
    )
    config = cloud_config.config.model_copy(update={"storage": dead})
    app = create_app(config, test_config={"TESTING": True})
    yield app, cloud_config.admin_token
    close_app(app)


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 10))
@given(data=st.data())
def test_unavailable_storage_is_a_503_with_retry_after(dead_storage_app, data):
    app, token = dead_storage_app
    what = data.draw(st.sampled_from(["latest", "mean", "history"]))
    qs = data.draw(st.sampled_from(["", "n=5", "limit=3", "order=asc", "since=1&until=2"]))
    client = app.test_client()
    resp = client.get(
        f"/devices/dev-1/metrics/temperature/{what}?{qs}",
        headers={"Authorization": f"Bearer {token}"},
    )
    check(resp, "GET", storage_up=False)
    if resp.status_code == 400:  # a parameter this route does not take
        return
    assert resp.status_code == 503 and resp.mimetype == PROBLEM_JSON
    assert resp.headers["Retry-After"] == "5"
    assert resp.get_json()["type"] == "urn:vigil:problem:storage-unavailable"


def test_unavailable_storage_leaves_the_other_routes_working(dead_storage_app):
    app, token = dead_storage_app
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    health = client.get("/health")
    check(health, "GET")
    assert health.get_json()["status"] == "degraded"
    for url in ("/devices", "/devices/dev-1", "/rules", "/devices/dev-1/metrics/t/replicas"):
        resp = client.get(url, headers=auth)
        check(resp, "GET", storage_up=False)
        assert resp.status_code == 200, url
    ring = client.get("/ring", headers=auth).get_json()
    assert [n["up"] for n in ring["nodes"]] == [False, False, False]


# -- the corpus: inputs that once broke the API ----------------------------------------------
def _rule_body(threshold: str, rule_id: str = "n") -> bytes:
    return (
        f'{{"id":{json.dumps(rule_id)},"metric":"temperature","op":"above",'
        f'"threshold":{threshold}}}'
    ).encode()


JSON = "application/json"
#: (method, url, body, Content-Type, expected status). Sent with the admin token.
CORPUS = [
    # issue 6, point 1: accepted (201), then GET /rules was a 500 for everyone
    ("POST", "/rules", _rule_body("1", "r\n"), JSON, 400),
    ("POST", "/rules", _rule_body("1", "r\r\n"), JSON, 400),
    ("POST", "/rules", _rule_body("1", "r\x00"), JSON, 400),
    # issue 6: a metric with a trailing newline reached InfluxDB: 502
    ("GET", "/devices/dev-1/metrics/temperature%0A/latest", None, None, 400),
    ("GET", "/devices/dev-1%0A/metrics/temperature/mean", None, None, 400),
    ("GET", "/devices/dev-1/metrics/temperature%0A/replicas", None, None, 400),
    ("GET", "/devices/dev-1%0A", None, None, 400),
    # issue 6: thresholds of 401 digits (OverflowError) and 5,001 (int-string limit): 500
    ("POST", "/rules", _rule_body("9" * 401), JSON, 400),
    ("POST", "/rules", _rule_body("9" * 5001), JSON, 400),
    ("POST", "/rules", _rule_body("-" + "9" * 401), JSON, 400),
    ("POST", "/rules", _rule_body("1e400"), JSON, 400),
    ("POST", "/rules", _rule_body("1" + "0" * 400 + ".0"), JSON, 400),
    ("POST", "/rules", _rule_body("NaN"), JSON, 400),
    ("POST", "/rules", _rule_body("Infinity"), JSON, 400),
    # bodies: deep nesting, not UTF-8, empty, not an object, lone surrogates, wrong types
    ("POST", "/rules", b"[" * 30_000 + b"]" * 30_000, JSON, 400),
    ("POST", "/rules", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, JSON, 400),
    ("POST", "/rules", b"[" * 100_000, JSON, 413),
    ("POST", "/rules", b"\xff\xfe{}", JSON, 400),
    ("POST", "/rules", json.dumps({"id": "x"}).encode("utf-16"), JSON + "; charset=utf-16", 400),
    ("POST", "/rules", b"", JSON, 400),
    ("POST", "/rules", b"null", JSON, 400),
    ("POST", "/rules", b"5", JSON, 400),
    ("POST", "/rules", b'"rule"', JSON, 400),
    (
        "POST",
        "/rules",
        b'{"name": "\\ud800", "metric": "t", "op": "above", "threshold": 1}',
        JSON,
        400,
    ),
    ("POST", "/rules", b'{"name": ["x"], "metric": "t", "op": "above", "threshold": 1}', JSON, 400),
    ("POST", "/rules", b'{"id": 5, "metric": "t", "op": "above", "threshold": 1}', JSON, 400),
    ("POST", "/rules", b'{"id": "x", "metric": "t", "op": ["above"], "threshold": 1}', JSON, 400),
    (
        "POST",
        "/rules",
        b'{"id": "x", "metric": "t", "op": "above", "threshold": 1}',
        "text/plain",
        415,
    ),
    ("POST", "/rules", b'{"id": "x", "metric": "t", "op": "above", "threshold": 1}', None, 415),
    ("POST", "/rules", b"x" * 70_000, JSON, 413),
    # query parameters: trailing newline, non-ASCII digits, repeats, huge, unknown
    ("GET", "/devices/dev-1/metrics/temperature/mean?n=5%0A", None, None, 400),
    ("GET", "/devices/dev-1/metrics/temperature/mean?n=%D9%A5", None, None, 400),
    ("GET", "/devices/dev-1/metrics/temperature/mean?n=%EF%BC%95", None, None, 400),
    ("GET", "/devices/dev-1/metrics/temperature/mean?n=1&n=1", None, None, 400),
    ("GET", "/devices/dev-1/metrics/temperature/mean?n=" + "9" * 5000, None, None, 400),
    ("GET", "/devices/dev-1/metrics/temperature/history?until=9223372036854", None, None, 400),
    ("GET", "/devices/dev-1/metrics/temperature/history?since=9223372036853", None, None, 200),
    ("GET", "/devices/dev-1/metrics/temperature/history?order=%FF", None, None, 400),
    ("GET", "/devices/dev-1/metrics/temperature/history?" + "x" * 5000 + "=1", None, None, 400),
    ("GET", "/rules?verbose=1", None, None, 400),
    # paths: any unicode, percent-encoded bytes, very long
    ("GET", "/devices/%FF%FE/metrics/temperature/latest", None, None, 400),
    ("GET", "/devices/%C3%A9", None, None, 400),
    ("GET", "/devices/" + "d" * 100_000, None, None, 400),
    ("GET", "/rules/" + "%00" * 100, None, None, 400),
    ("GET", "/" + "%F0%9F%94%A5" * 1000, None, None, 404),
    # found by this fuzzer: merged slashes were a 308 with an HTML body, OPTIONS a text/html 200
    ("GET", "/devices//dev-1", None, None, 404),
    ("GET", "/devices/dev-1/metrics//latest", None, None, 404),
    ("OPTIONS", "/rules", None, None, 204),
    ("OPTIONS", "/devices/dev-1/metrics/temperature/latest", None, None, 204),
    # methods
    ("FOO", "/rules", None, None, 405),
    ("TRACE", "/health", None, None, 405),
    ("PUT", "/devices/dev-1/metrics/temperature/latest", b"{}", JSON, 405),
    # found by this fuzzer: /docs is the one HTML answer
    ("GET", "/docs", None, JSON, 200),
    ("GET", "/openapi.json", None, None, 200),
    # the web console's files and its live stream (issue 10): not JSON either
    ("GET", "/console/", None, None, 200),
    ("GET", f"/devices/dev-1/metrics/temperature/stream?since={STORED_T0}", None, None, 200),
]


@pytest.mark.parametrize(
    "case", CORPUS, ids=[f"{i}-{m} {u[:40]}" for i, (m, u, *_rest) in enumerate(CORPUS)]
)
def test_corpus(fuzz_app, case):
    method, url, data, content_type, status = case
    app, token = fuzz_app
    headers = {"Authorization": f"Bearer {token}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    resp = app.test_client().open(url, method=method, headers=headers, data=data or b"")
    check(resp, method)
    assert resp.status_code == status, resp.get_data(as_text=True)[:500]


#: (headers, path, expected status): headers that once were, or could be, trouble.
HEADER_CORPUS = [
    ({"Authorization": "Bearer " + "a" * 100_000}, "/rules", 401),
    ({"Authorization": "Bearer tok\x00"}, "/rules", 401),
    ({"Authorization": "Bearer \xff\xfe"}, "/rules", 401),
    ({"Authorization": "Bearer\ttok"}, "/rules", 401),
    ({"Authorization": "\x00"}, "/rules", 401),
    ({"Authorization": "Bearer tok", "X-Junk": "x" * 100_000}, "/rules", 401),
    ({"Authorization": "Bearer " + "a" * 100_000}, "/health", 200),
    ({"Authorization": "Basic \xff"}, "/health", 200),
]


@pytest.mark.parametrize(("headers", "path", "status"), HEADER_CORPUS)
def test_header_corpus(fuzz_app, headers, path, status):
    app, _token = fuzz_app
    resp = app.test_client().get(path, headers=headers)
    check(resp, "GET")
    assert resp.status_code == status
    if path == "/health":
        assert all("url" not in n for n in resp.get_json()["storage"])
