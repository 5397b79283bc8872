"""Pure checks of request input: query parameters, path names, rule ids from names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.validation import (
    MAX_TIME_MS,
    InvalidParameter,
    check_path_name,
    parse_history_args,
    parse_mean_args,
    reject_args,
    rule_id_from_name,
)
from vigil.names import is_name


def test_mean_defaults_to_ten_and_accepts_the_bounds():
    assert parse_mean_args({}) == 10
    assert parse_mean_args({"n": ["1"]}) == 1
    assert parse_mean_args({"n": ["10000"]}) == 10000


@pytest.mark.parametrize(
    "raw",
    [
        "0",
        "10001",
        "-1",
        "abc",
        "1.5",
        " 5",
        "+5",
        "",
        "1_0",
        "5\n",  # passed when the pattern ended in "$" (match, not fullmatch)
        "5 ",
        "\u0665",  # ARABIC-INDIC DIGIT FIVE: int() takes it
        "\uff15",  # FULLWIDTH DIGIT FIVE
        "0x5",
        "9" * 20,
        "9" * 5000,  # int() of this raises ValueError (the int-string limit) if ever reached
    ],
)
def test_mean_rejects_n_outside_1_to_10000(raw):
    with pytest.raises(InvalidParameter) as err:
        parse_mean_args({"n": [raw]})
    assert err.value.parameter == "n"
    assert "from 1 to 10000" in err.value.reason
    assert (repr(raw) if len(raw) < 60 else repr(raw[:20])[:-1]) in err.value.reason
    assert len(err.value.reason) < 200


def test_a_long_unknown_parameter_name_is_cut_in_the_error():
    with pytest.raises(InvalidParameter) as err:
        reject_args({"x" * 10_000: ["1"]})
    assert len(err.value.parameter) <= 70 and err.value.parameter.endswith("...")


def test_history_defaults():
    q = parse_history_args({})
    assert (q.since_ms, q.until_ms, q.limit, q.newest_first, q.order) == (
        None,
        None,
        100,
        True,
        "desc",
    )


def test_history_parses_every_parameter():
    q = parse_history_args(
        {"since": ["1700000000000"], "until": ["1700000001000"], "limit": ["5"], "order": ["asc"]}
    )
    assert (q.since_ms, q.until_ms, q.limit, q.newest_first) == (
        1700000000000,
        1700000001000,
        5,
        False,
    )


@pytest.mark.parametrize(
    ("args", "param", "words"),
    [
        ({"limit": ["0"]}, "limit", "from 1 to 10000"),
        ({"limit": ["x"]}, "limit", "'x'"),
        ({"since": ["-5"]}, "since", "integer"),
        ({"until": [str(MAX_TIME_MS + 1)]}, "until", str(MAX_TIME_MS)),
        ({"order": ["up"]}, "order", "asc or desc"),
        ({"since": ["20"], "until": ["10"]}, "since", "after until"),
        ({"sinse": ["1"]}, "sinse", "unknown query parameter"),
        ({"limit": ["1", "2"]}, "limit", "more than once"),
    ],
)
def test_history_names_the_bad_parameter(args, param, words):
    with pytest.raises(InvalidParameter) as err:
        parse_history_args(args)
    assert err.value.parameter == param
    assert words in err.value.reason


def test_routes_without_parameters_reject_any():
    reject_args({})
    with pytest.raises(InvalidParameter, match="allowed: none"):
        reject_args({"n": ["1"]})


@pytest.mark.parametrize("name", ["dev-1", "temperature", "a", "A.b_c-9", "x" * 64])
def test_valid_path_names_pass(name):
    assert check_path_name("device", name) == name


@pytest.mark.parametrize("name", ["", "-dev", "dev 1", 'a"b', "x" * 65, "é", "a/b", "a;b"])
def test_invalid_path_names_are_rejected_with_the_parameter(name):
    with pytest.raises(InvalidParameter) as err:
        check_path_name("metric", name)
    assert err.value.parameter == "metric"


@pytest.mark.parametrize(
    ("name", "rule_id"),
    [
        ("High temp (lab)", "high-temp-lab"),
        ("Température haute", "temperature-haute"),
        ("  cpu.load_1m  ", "cpu.load_1m"),
        ("--Alert--", "alert"),
        ("x" * 100, "x" * 64),
    ],
)
def test_rule_id_from_name(name, rule_id):
    assert rule_id_from_name(name) == rule_id


@pytest.mark.parametrize("name", ["", "   ", "!!!", "日本語"])
def test_rule_id_from_a_name_without_usable_characters_fails(name):
    with pytest.raises(ValueError, match="cannot derive a rule id"):
        rule_id_from_name(name)


@given(st.text(max_size=200))
def test_a_derived_rule_id_is_always_a_valid_name(name):
    try:
        rule_id = rule_id_from_name(name)
    except ValueError:
        return
    assert is_name(rule_id)
    assert rule_id == rule_id_from_name(rule_id)  # stable: deriving again changes nothing


ARGS = st.dictionaries(
    st.sampled_from(["n", "since", "until", "limit", "order"]) | st.text(max_size=10),
    st.lists(st.text(max_size=30) | st.from_regex(r"[0-9]{1,25}", fullmatch=True), max_size=3),
    max_size=5,
)


@given(ARGS)
def test_query_parsers_are_total(args):
    """Any query gives a value or InvalidParameter naming one of its parameters."""
    for parse in (parse_mean_args, parse_history_args, reject_args):
        try:
            parse(args)
        except InvalidParameter as exc:
            assert exc.parameter in args or exc.parameter.endswith("...")
            assert exc.reason and len(exc.reason) < 200
