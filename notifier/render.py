"""Alert -> email, pure: a subject line, a text part and an HTML part from Jinja2 templates
(``notifier/templates/alert.txt.j2`` and ``alert.html.j2``; HTML autoescaped).

The Message-ID is derived from the alert id and state, so a mail system (or a person) can
spot the rare duplicate the at-least-once hand-over to SMTP may produce.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from vigil.messages import Alert
from vigil.usertemplates import TemplateProblem, render

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEXT_TEMPLATE = "alert.txt.j2"
HTML_TEMPLATE = "alert.html.j2"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9._-]")
COLOURS = {"critical": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}
RESOLVED_COLOUR = "#2e7d32"

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(enabled_extensions=("html.j2", "html"), default=False),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def fmt_number(value: float) -> str:
    """``30`` for 30.0, ``31.2`` for 31.2 (shortest exact form otherwise)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def fmt_time(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(ms: int) -> str:
    seconds = max(0, ms) // 1000
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s",
    ]
    return " ".join(p for p in parts if p) if seconds else f"{max(0, ms)}ms"


def _line(text: str) -> str:
    """One header-safe line: control characters (newlines included) become spaces."""
    return _CONTROL.sub(" ", text).strip()


def summary(alert: Alert) -> str:
    """``high-temp on dev-1: temperature 31.2 above 30`` (resolved: ``no longer above``; resolved
    without a reading: ``high-temp on dev-1: rule deleted``)."""
    if alert.state == "resolved" and alert.reason:
        return _line(f"{alert.rule} on {alert.device}: {alert.reason}")
    if alert.kind != "threshold" and alert.detail:
        return _line(f"{alert.rule}: {alert.detail}")
    condition = (
        f"{alert.op} {fmt_number(alert.threshold)}"
        if alert.state == "firing"
        else f"no longer {alert.op} {fmt_number(alert.threshold)}"
    )
    return _line(
        f"{alert.rule} on {alert.device}: {alert.metric} {fmt_number(alert.value)} {condition}"
    )


def condition(alert: Alert) -> str:
    """What the rule watches for: ``above 30``, ``outside (crossed 80)``, ``rise by 2%``,
    ``no data for 60 s``, ``offline for 30 s``."""
    level = fmt_number(alert.threshold)
    if alert.kind == "band":
        return f"outside its band (crossed {level})"
    if alert.kind == "change":
        return f"{alert.op} by {level}%"
    if alert.kind == "nodata":
        return f"no data for {level} s"
    if alert.kind == "offline":
        return f"offline for {level} s" if alert.threshold else "offline"
    return f"{alert.op} {level}"


def subject(alert: Alert) -> str:
    """``[FIRING critical] high-temp on dev-1: temperature 31.2 above 30``."""
    return _line(f"[{alert.state.upper()} {alert.severity}] {summary(alert)}")


def context(alert: Alert) -> dict[str, Any]:
    """What the templates see."""
    resolved_at = alert.resolved_at if alert.resolved_at is not None else alert.ts
    return {
        "alert": alert,
        "subject": subject(alert),
        "headline": f"{alert.state.capitalize()} ({_line(alert.severity)}): {summary(alert)}",
        "value": fmt_number(alert.value),
        "threshold": fmt_number(alert.threshold),
        "condition": condition(alert),
        "detail": _line(alert.detail),
        "started": fmt_time(alert.started_at),
        "resolved": fmt_time(resolved_at),
        "duration": fmt_duration(resolved_at - alert.started_at),
        "colour": RESOLVED_COLOUR
        if alert.state == "resolved"
        else COLOURS.get(alert.severity, COLOURS["warning"]),
    }


def message_id(alert: Alert, sender: str) -> str:
    domain = _NOT_TOKEN.sub("_", sender.rpartition("@")[2]) or "vigil.invalid"
    return f"<{_NOT_TOKEN.sub('_', alert.alert_id)}.{alert.state}@{domain}>"


def render_email(alert: Alert, *, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """The email for one alert transition: text and HTML alternatives."""
    ctx = context(alert)
    msg = EmailMessage()
    msg["Subject"] = ctx["subject"]
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(datetime.fromtimestamp(alert.ts / 1000, UTC))
    msg["Message-ID"] = message_id(alert, sender)
    msg["X-Vigil-Alert-Id"] = _line(alert.alert_id)
    msg["X-Vigil-State"] = alert.state
    msg["X-Vigil-Device"] = _line(alert.device)
    msg["X-Vigil-Rule"] = _line(alert.rule_id)
    msg.set_content(_env.get_template(TEXT_TEMPLATE).render(ctx))
    msg.add_alternative(_env.get_template(HTML_TEMPLATE).render(ctx), subtype="html")
    return msg


GROUP_TEXT_TEMPLATE = "group.txt.j2"
GROUP_HTML_TEMPLATE = "group.html.j2"


def _row(alert: Alert) -> dict[str, Any]:
    ctx = context(alert)
    return {
        "alert_id": alert.alert_id,
        "state": alert.state,
        "severity": _line(alert.severity),
        "summary": summary(alert),
        "started": ctx["started"],
        "resolved": ctx["resolved"],
        "duration": ctx["duration"],
        "colour": ctx["colour"],
    }


def group_subject(alerts: Sequence[Alert], *, repeat: bool = False) -> str:
    """``[FIRING:2 RESOLVED:1] high-temp`` (the rule when all share one, else the count),
    ``[STILL FIRING:2] ...`` for a repeat."""
    firing = sum(a.state == "firing" for a in alerts)
    resolved = len(alerts) - firing
    if repeat:
        counts = f"STILL FIRING:{firing}"
    else:
        counts = " ".join(
            f"{name}:{n}" for name, n in (("FIRING", firing), ("RESOLVED", resolved)) if n
        )
    rules = {a.rule for a in alerts}
    devices = {a.device for a in alerts}
    what = next(iter(rules)) if len(rules) == 1 else f"{len(rules)} rules"
    where = f" on {next(iter(devices))}" if len(devices) == 1 else f" on {len(devices)} devices"
    return _line(f"[{counts}] {what}{where}")


def render_notification(
    alerts: Sequence[Alert],
    *,
    firing: Sequence[Alert] = (),
    repeat: bool = False,
    notification_id: str,
    sender: str,
    recipients: Sequence[str],
) -> EmailMessage:
    """The email of one notification: a lone transition's own email, else the group's,
    listing each transition (and, as context, the group's other alerts still firing)."""
    if len(alerts) == 1 and not firing and not repeat:
        return render_email(alerts[0], sender=sender, recipients=recipients)
    subj = group_subject(alerts, repeat=repeat)
    ctx = {
        "subject": subj,
        "headline": subj,
        "alerts": [_row(a) for a in alerts],
        "firing": [_row(a) for a in firing],
    }
    msg = EmailMessage()
    msg["Subject"] = subj
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(datetime.fromtimestamp(max(a.ts for a in alerts) / 1000, UTC))
    domain = _NOT_TOKEN.sub("_", sender.rpartition("@")[2]) or "vigil.invalid"
    msg["Message-ID"] = f"<{_NOT_TOKEN.sub('_', notification_id)}@{domain}>"
    msg["X-Vigil-Alert-Id"] = _line(", ".join(a.alert_id for a in alerts))
    msg["X-Vigil-State"] = "repeat" if repeat else ", ".join(sorted({a.state for a in alerts}))
    devices = sorted({a.device for a in alerts})
    msg["X-Vigil-Device"] = _line(", ".join(devices))
    msg["X-Vigil-Rule"] = _line(", ".join(sorted({a.rule_id for a in alerts})))
    msg.set_content(_env.get_template(GROUP_TEXT_TEMPLATE).render(ctx))
    msg.add_alternative(_env.get_template(GROUP_HTML_TEMPLATE).render(ctx), subtype="html")
    return msg


def telegram_text(
    alerts: Sequence[Alert], firing: Sequence[Alert] = (), *, repeat: bool = False
) -> str:
    """A notification as a short plain-text chat message."""
    if len(alerts) == 1 and not firing and not repeat:
        head = subject(alerts[0])
    else:
        head = group_subject(alerts, repeat=repeat)
    lines = [head]
    if len(alerts) > 1 or firing or repeat:
        lines += [f"- {a.state.upper()} ({_line(a.severity)}): {summary(a)}" for a in alerts]
    elif alerts[0].detail:
        lines.append(_line(alerts[0].detail))
    if firing:
        lines.append(f"Still firing: {len(firing)}")
        lines += [f"- {summary(a)}" for a in firing]
    return "\n".join(lines)


def user_row(alert: Alert) -> dict[str, Any]:
    """What a user's template sees of one alert (vigil.usertemplates)."""
    return {
        **_row(alert),
        "rule": _line(alert.rule),
        "rule_id": alert.rule_id,
        "device": alert.device,
        "metric": alert.metric,
        "value": fmt_number(alert.value),
        "detail": _line(alert.detail),
        "kind": alert.kind,
        "symbol": alert.symbol,
    }


def with_user_templates(
    msg: EmailMessage,
    templates: Mapping[str, str],
    *,
    alerts: Sequence[Alert],
    firing: Sequence[Alert],
    repeat: bool,
    owner: str,
) -> tuple[EmailMessage, str | None]:
    """``msg`` with the parts the user's ``templates`` replace; on a template that fails,
    ``msg`` as it was and the reason."""
    ctx = {
        "alerts": [user_row(a) for a in alerts],
        "firing": [user_row(a) for a in firing],
        "repeat": repeat,
        "owner": owner,
        "subject": str(msg["Subject"]),
    }
    try:
        parts = {key: render(key, source, ctx) for key, source in templates.items()}
    except TemplateProblem as exc:
        return msg, str(exc)
    text_part, html_part = msg.get_body(("plain",)), msg.get_body(("html",))
    text = parts.get("text") or (text_part.get_content() if text_part is not None else "")
    html = parts.get("html") or (html_part.get_content() if html_part is not None else "")
    out = EmailMessage()
    for name, value in msg.items():
        if name.lower() not in ("content-type", "mime-version", "content-transfer-encoding"):
            out[name] = value
    if "subject" in parts:
        del out["Subject"]
        out["Subject"] = _line(parts["subject"])
    out.set_content(text)
    out.add_alternative(html, subtype="html")
    return out, None
