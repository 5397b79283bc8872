"""Path parts that become topic levels and InfluxQL identifiers must be valid names."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from flask import request

from api.validation import check_path_name

PATH_NAMES = frozenset({"device", "metric", "rule_id", "user", "token_id"})


def check_view_args(
    _endpoint: str | None, values: Mapping[str, Any] | None, skip: Collection[str] = ()
) -> None:
    """400 (InvalidParameter) for an invalid path name among ``values``, but those in
    ``skip`` (a view that checks them itself)."""
    for key, value in (values or {}).items():
        if key in PATH_NAMES and key not in skip:
            check_path_name(key, value)


def check_path_names() -> None:
    """A blueprint's ``before_request`` hook: it runs after authentication (app hooks run
    first), so a caller without a token gets 401 whatever the path holds."""
    check_view_args(request.endpoint, request.view_args)
