"""Path parts that become topic levels and InfluxQL identifiers must be valid names."""

from __future__ import annotations

from typing import Any

from api.validation import check_path_name

PATH_NAMES = frozenset({"device", "metric", "rule_id"})


def check_view_args(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A ``url_value_preprocessor``: 400 (InvalidParameter) for an invalid path name."""
    for key, value in (values or {}).items():
        if key in PATH_NAMES:
            check_path_name(key, value)
