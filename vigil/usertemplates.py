"""Users' own notification templates (Jinja2, sandboxed), checked the same way by the API
(on PUT) and the notifier (on render): a user's template is outside input.

A user may set any of ``subject`` (one line), ``text`` and ``html`` (autoescaped). They see:
``alerts`` (the transitions of the notification: each with ``alert_id``, ``state``,
``severity``, ``summary``, ``rule``, ``rule_id``, ``device``, ``metric``, ``value``,
``detail``, ``kind``, ``symbol``, ``started``, ``resolved``, ``duration``), ``firing`` (the
group's other alerts still firing, the same fields), ``repeat``, ``owner`` and ``subject``
(the default subject).

What keeps a template from stalling the notifier: Jinja2's sandbox (no attribute access
beyond the data), no ``range``, no macros, includes, imports or call blocks, at most two
nested loops (over at most a notification's alerts), ``*`` and ``**`` bounded, and the
output capped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

TEMPLATE_KEYS = ("subject", "text", "html")
MAX_CHARS = {"subject": 300, "text": 20_000, "html": 50_000}
MAX_OUTPUT = {"subject": 300, "text": 100_000, "html": 200_000}
MAX_LOOP_DEPTH = 2
FORBIDDEN = (nodes.Macro, nodes.CallBlock, nodes.Include, nodes.Import, nodes.FromImport,
             nodes.Extends)  # fmt: skip


class TemplateProblem(ValueError):
    """A user template that cannot be used: the reason names the template and the line."""


class _Bounded(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and (abs(right) > 64 if isinstance(right, int | float) else True):
            raise SecurityError("'**' with an exponent over 64")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(n, int)
                    and n * max(1, len(seq)) > 10_000
                ):
                    raise SecurityError("'*' making a sequence longer than 10000")
        return super().call_binop(context, operator, left, right)


def _env(autoescape: bool) -> SandboxedEnvironment:
    env = _Bounded(autoescape=autoescape, undefined=StrictUndefined, trim_blocks=True,
                   lstrip_blocks=True)  # fmt: skip
    for name in ("range", "lipsum", "cycler", "joiner", "namespace"):
        env.globals.pop(name, None)
    return env


_TEXT = _env(False)
_HTML = _env(True)


def _depth(node: nodes.Node, level: int = 0) -> int:
    here = level + 1 if isinstance(node, nodes.For) else level
    return max([here, *(_depth(child, here) for child in node.iter_child_nodes())])


def check_source(key: str, source: object) -> str:
    """A template that may be stored: TemplateProblem says why not."""
    if key not in TEMPLATE_KEYS:
        raise TemplateProblem(f"{key!r} is not a template (one of {', '.join(TEMPLATE_KEYS)})")
    if not isinstance(source, str) or not source.strip():
        raise TemplateProblem(f"{key}: must be a non-empty template text")
    if len(source) > MAX_CHARS[key]:
        raise TemplateProblem(f"{key}: longer than {MAX_CHARS[key]} characters")
    env = _HTML if key == "html" else _TEXT
    try:
        tree = env.parse(source)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise TemplateProblem(f"{key}: line {line}: {exc}" if line else f"{key}: {exc}") from None
    for bad in FORBIDDEN:
        found = next(iter(tree.find_all(bad)), None)
        if found is not None:
            raise TemplateProblem(
                f"{key}: line {found.lineno}: {type(found).__name__.lower()} is not allowed in a "
                "user template"
            )
    if _depth(tree) > MAX_LOOP_DEPTH:
        raise TemplateProblem(f"{key}: loops nested deeper than {MAX_LOOP_DEPTH}")
    return source


def render(key: str, source: str, ctx: Mapping[str, Any]) -> str:
    """Render one user template; TemplateProblem if it fails (the caller falls back to the
    default)."""
    env = _HTML if key == "html" else _TEXT
    try:
        out = env.from_string(check_source(key, source)).render(ctx)
    except TemplateProblem:
        raise
    except (
        TemplateError,
        ArithmeticError,
        TypeError,
        ValueError,
        LookupError,
        RecursionError,
    ) as exc:
        raise TemplateProblem(f"{key}: {type(exc).__name__}: {exc}") from None
    if len(out) > MAX_OUTPUT[key]:
        raise TemplateProblem(f"{key}: renders to more than {MAX_OUTPUT[key]} characters")
    if key == "subject":
        out = " ".join(out.split())
        if not out:
            raise TemplateProblem("subject: renders empty")
    return out


SAMPLE_ROW: dict[str, Any] = {
    "alert_id": "sample-1", "state": "firing", "severity": "critical",
    "summary": "high-temp on dev-1: temperature 31.2 above 30", "rule": "high-temp",
    "rule_id": "high-temp", "device": "dev-1", "metric": "temperature", "value": "31.2",
    "detail": "", "kind": "threshold", "symbol": None, "started": "2026-01-01 00:00:00 UTC",
    "resolved": "", "duration": "", "colour": "#c62828",
}  # fmt: skip
SAMPLE = {"alerts": [SAMPLE_ROW], "firing": [SAMPLE_ROW], "repeat": False, "owner": "alice",
          "subject": "[FIRING critical] high-temp on dev-1: temperature 31.2 above 30"}  # fmt: skip


def check_templates(templates: object) -> dict[str, str]:
    """``{"subject"?, "text"?, "html"?}``, each checked and tried on a sample
    notification; TemplateProblem says what is wrong."""
    if not isinstance(templates, dict):
        raise TemplateProblem("templates must be an object with subject, text and/or html")
    out = {key: check_source(key, source) for key, source in templates.items()}
    for key, source in out.items():
        render(key, source, SAMPLE)
    return out
