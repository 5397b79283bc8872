"""vigil.jsonin's two paths agree: orjson (the consumers' hot path) and the standard
library give the same value, or both a JsonInputError, for any bytes (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.jsonin import MAX_DEPTH, JsonInputError, _loads_std, loads

VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
TEXTS = VALUES.map(lambda v: json.dumps(v).encode())
# text that is almost JSON: cut, spliced, with escapes and numbers that are not quite right
NEAR = st.lists(
    st.sampled_from(
        [b"{", b"}", b"[", b"]", b'"', b":", b",", b"1", b"-", b"e", b"9" * 19, b"\\u", b"d800",
         b"NaN", b"true", b"\xff", b"\xed\xa0\x80", b"\xef\xbb\xbf", b" ", b"0.5", b"a"]
    ),
    max_size=20,
).map(b"".join)  # fmt: skip


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def outcome(fn: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "value", fn(data)
    except JsonInputError:
        return "error", None


@settings(max_examples=600, deadline=None)
@given(TEXTS | NEAR | st.binary(max_size=40))
def test_the_fast_path_and_the_standard_library_agree(data):
    fast = outcome(lambda d: loads(d, max_bytes=1 << 20), data)
    slow = outcome(lambda d: _loads_std(d, MAX_DEPTH), data)
    assert fast[0] == slow[0], (data, fast, slow)
    assert same(fast[1], slow[1]), (data, fast, slow)
