"""JSON from outside (MQTT payloads, API bodies), parsed totally and within bounds.

:func:`loads` turns any byte string into a JSON value or raises :class:`JsonInputError` with
a reason a person can act on; nothing else escapes. Sizes, nesting depth and the digits of
integers are bounded *before* Python converts anything, so a payload cannot make the parser
raise ``RecursionError``, hit Python's int-string limit (``ValueError``), or hand back an
integer that overflows a float later (``OverflowError``). ``NaN`` and ``Infinity``, which
are not JSON, are refused.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

#: Deepest nesting of arrays and objects accepted; Vigil's messages need 3.
MAX_DEPTH = 32
#: Most digits of an integer literal: 2**64 has 20; anything longer is refused, not parsed.
MAX_INT_DIGITS = 20


class JsonInputError(ValueError):
    """Input that is not JSON within Vigil's bounds; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonInputError(
            f"an integer has {len(text.lstrip('-'))} digits, more than {MAX_INT_DIGITS}"
        )
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonInputError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not a JSON value")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_tree(obj: Any, max_depth: int) -> None:
    """Depth within bounds; no string (or key) holding a lone UTF-16 surrogate, which JSON's
    ``\\ud800`` escapes allow but UTF-8 cannot encode."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise JsonInputError("a string holds a lone surrogate (\\ud800-\\udfff)")
            continue
        if isinstance(value, dict):
            children: Any = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            raise JsonInputError(f"nested more than {max_depth} levels deep")
        stack.extend((child, depth + 1) for child in children)


#: a run of digits long enough that orjson might turn an integer into a float
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``data`` (UTF-8 bytes or text), or JsonInputError.

    Bytes go through orjson first (several times faster: the consumers' hot path). Whatever
    orjson refuses, and any text where it could differ from the rules here (a run of 19 or
    more digits: orjson turns integers past 64 bits into floats), takes the standard-library
    path, which gives the value or the precise reason. Both give the same value for every
    input orjson accepts (tests/test_vigil_jsonin_fast.py checks that)."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise JsonInputError(f"payload is {size} bytes, over {max_bytes}")
    if isinstance(data, bytes) and _LONG_DIGITS.search(data) is None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # the slow path says why
        else:
            if data.count(b"[") + data.count(b"{") > max_depth or b"\\u" in data:
                _check_tree(obj, max_depth)
            return obj
    return _loads_std(data, max_depth)


def _loads_std(data: bytes | str | bytearray | memoryview, max_depth: int) -> Any:
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"payload is not UTF-8 (byte {exc.start})") from None
    else:
        text = data
    try:
        obj = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant
        )
    except JsonInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"payload is not JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise JsonInputError(f"nested more than {max_depth} levels deep") from None
    except (ValueError, TypeError) as exc:  # e.g. a lone surrogate the decoder refuses
        raise JsonInputError(f"payload is not JSON: {exc}") from None
    # The walk is needed only if the text could hold what it looks for (counted in C): more
    # brackets than the depth allowed, or a \\u escape (the only way JSON text can carry a
    # lone surrogate once it decoded as UTF-8). A reading has neither: the hot path skips it.
    if isinstance(data, str) or text.count("[") + text.count("{") > max_depth or "\\u" in text:
        _check_tree(obj, max_depth)
    return obj
