"""The request bodies of the API as msgspec Structs: the one description of each body, used
twice. Every body is validated against its Struct before its route looks at it (types,
required and unknown fields: a problem naming the key, ``emails[2]: Input should be a valid
string, not an integer``), and ``GET /openapi.json`` (:mod:`api.openapi`) is generated from
the same Structs. What a type cannot say (a name's characters, an e-mail address, a rule's
fields by kind) the route checks next, with its own words.

A view declares its body with :func:`body`; :func:`api.body.json_object` finds it there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from api.db import ROLES
from vigil.agent_settings import convert
from vigil.config_core import KeyedError
from vigil.messages import CHANGE_DIRECTIONS, RULE_KINDS, SEVERITIES

F = TypeVar("F", bound=Callable[..., Any])
#: the attribute of a view function that names its body's Struct
BODY_ATTR = "_vigil_body"
Number = float  # msgspec accepts an integer for a float
Millis = Annotated[int, Meta(description="epoch milliseconds")]


def _one_of(values: tuple[str, ...]) -> Meta:
    """A string documented as one of ``values``; the route names them if it is not."""
    return Meta(extra_json_schema={"enum": list(values)})


Role = Annotated[str, _one_of(ROLES)]
RuleKind = Annotated[str, _one_of(RULE_KINDS)]
Severity = Annotated[str, _one_of(SEVERITIES)]
Op = Annotated[str, _one_of(("above", "below"))]
Direction = Annotated[str, _one_of(CHANGE_DIRECTIONS)]
SloKind = Annotated[str, _one_of(("ingest_lag", "alert_latency", "delivery_success"))]


class Body(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """The base of every request body: no field it does not declare."""


def body(schema: type[Any]) -> Callable[[F], F]:
    """Declare the Struct (or pydantic model, for the devices') a view's JSON body is
    validated against and documented by."""

    def mark(view: F) -> F:
        setattr(view, BODY_ATTR, schema)
        return view

    return mark


def body_of(view: Callable[..., Any]) -> type[Any] | None:
    schema: type[Any] | None = getattr(view, BODY_ATTR, None)
    return schema


def check_body(schema: type[Any], obj: dict[str, Any]) -> str | None:
    """Why ``obj`` does not fit ``schema`` (``key: reason``), or None if it does. Unknown
    fields are named with the ones allowed."""
    is_struct = issubclass(schema, msgspec.Struct)
    fields = schema.__struct_fields__ if is_struct else tuple(schema.model_fields)
    unknown = sorted(str(k) for k in set(obj) - set(fields))
    if unknown:
        return f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(fields))})"
    if not is_struct:
        return None  # a pydantic model: the route validates with it, as the document says
    try:
        convert(schema, obj)
    except KeyedError as exc:
        return f"{exc.key}: {exc.reason}"
    return None


# -- users --------------------------------------------------------------------------------
class UserCreate(Body):
    """A user and their first token."""

    name: Annotated[str, Meta(description="a name: 1-64 of A-Z a-z 0-9 _ . -")]
    role: Role = "user"
    label: Annotated[str, Meta(description="the first token's label")] = ""


class UserUpdate(Body):
    role: Role


class TokenCreate(Body):
    label: str = ""


class Recipients(Body):
    emails: Annotated[list[str], Meta(description="e-mail addresses, at most 20")]


class WebhookBody(Body):
    name: str
    url: Annotated[str, Meta(description="http(s) URL the notifications are POSTed to")]
    secret: Annotated[str, Meta(description="HMAC key; generated when left out")] | None = None


class Webhooks(Body):
    webhooks: list[WebhookBody]


class Telegram(Body):
    chat_id: Annotated[
        str | int | None, Meta(description="a chat id or @channel; null: no Telegram")
    ]


class Templates(Body):
    subject: Annotated[str, Meta(description="Jinja2, sandboxed")] | None = None
    text: str | None = None
    html: str | None = None


class Subscriptions(Body):
    symbols: Annotated[list[str], Meta(description="ticker symbols, at most 100")]


# -- rules, silences, SLOs ----------------------------------------------------------------
class RuleBody(Body):
    """A rule (POST, PUT) or the fields to change (PATCH). Which fields apply depends on
    ``kind``; the route says which are missing or do not apply."""

    id: str | None = None
    name: str | None = None
    kind: RuleKind | None = None
    metric: str | None = None
    device: Annotated[str, Meta(description="a device id or a * ? pattern")] | None = None
    symbol: Annotated[str, Meta(description="a ticker: the rule watches its price")] | None = None
    severity: Severity | None = None
    enabled: bool | None = None
    op: Op | None = None
    threshold: Number | None = None
    clear: Annotated[Number, Meta(description="hysteresis: resolves past this")] | None = None
    for_s: Number | None = None
    low: Number | None = None
    high: Number | None = None
    percent: Number | None = None
    window_s: Number | None = None
    direction: Direction | None = None
    owner: Annotated[str, Meta(description="admin only: the user the rule is for")] | None = None


class SilenceBody(Body):
    matchers: Annotated[
        dict[str, str],
        Meta(description="label -> shell pattern: device, rule_id, severity, kind, symbol, metric"),
    ]
    duration_s: Number | None = None
    ends_at: Millis | None = None
    starts_at: Millis | None = None
    comment: str = ""


class SloBody(Body):
    id: str
    kind: SloKind
    target: Annotated[Number, Meta(description="a fraction of events, (0, 1]")]
    threshold_s: Number | None = None
    window_s: Number | None = None
    description: str = ""


# -- storage --------------------------------------------------------------------------------
class ServerBody(Body):
    name: str
    url: str


class StrategyBody(Body):
    strategy: str
