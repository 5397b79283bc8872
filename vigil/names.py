"""The one name type: device ids, metric names, tag keys, rule ids, symbols, user names.

A name is 1-64 characters from ``A-Z a-z 0-9 _ . -`` starting with a letter or digit. It is
safe as a topic level, an InfluxDB measurement, tag key or identifier, a file name and a
log field. It is matched whole (``fullmatch``): a regular expression ending in ``$`` also
accepts a trailing newline, which turned a tag key into a second line-protocol line.

This module is the only place that says what a name may hold; everything else calls
:func:`is_name` or :func:`check_name`.
"""

from __future__ import annotations

import re

from vigil.text import shown

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
MAX_NAME_LEN = 64
#: What a name may hold, in the words every error message uses.
#: the user behind the admin token; rules from before owners are theirs
ADMIN_USER = "admin"
NAME_RULE = "use 1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"

_NAME = re.compile(NAME_PATTERN)


class InvalidName(ValueError):
    """A value that is not a name; the message says which thing it was meant to be."""

    def __init__(self, what: str, value: object) -> None:
        text = shown(value) if isinstance(value, str) else f"of type {type(value).__name__}"
        super().__init__(f"invalid {what} {text}: {NAME_RULE}")
        self.what, self.value = what, value


def is_name(value: object) -> bool:
    """True if ``value`` is a str that is a valid name, whole."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def is_tag_key(value: object) -> bool:
    """A name that starts with a letter (InfluxDB tag keys of readings)."""
    return is_name(value) and str(value)[0].isalpha()


def check_name(value: object, what: str = "name") -> str:
    """``value`` if it is a valid name, else :class:`InvalidName` naming ``what``."""
    if not is_name(value):
        raise InvalidName(what, value)
    assert isinstance(value, str)
    return value
