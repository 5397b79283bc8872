"""``GET /console/`` (public): the web console, a page and its scripts and styles served as
they are from ``api/console/static`` (no template engine, no build step, no CDN; uPlot is
vendored under ``static/vendor``).

The files are public, the data is not: the page asks for an API token, keeps it in the tab's
``sessionStorage`` and sends it as ``Authorization: Bearer`` on every call to the JSON API,
which scopes each answer to the caller as it does for any client. Every answer here carries a
strict Content-Security-Policy: scripts and styles from this origin only (the page has no
inline script or style), connections to this origin only, no frames, no form submission (a
form that reached the network without its script would put the token in a URL).
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, request

from api.console.assets import FILES, PREFIX, content_type
from api.validation import reject_args

bp = Blueprint("console", __name__)

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def console_file() -> Response:
    """A file of the web console (public: the page, its scripts and styles; every data call
    the page makes needs a token)."""
    reject_args(request.args.to_dict(flat=False))
    path = FILES[request.url_rule.rule if request.url_rule is not None else request.path]
    return Response(path.read_bytes(), content_type=f"{content_type(path)}; charset=utf-8")


def _endpoint(url: str) -> str:
    """A unique endpoint per file ("/console/vendor/uPlot.min.css": "vendor_uPlot_min_css"),
    so each has its own operation id in the OpenAPI document."""
    rest = url.removeprefix(PREFIX).strip("/")
    if not rest:
        return "page" if url == PREFIX else "page_slash"
    return re.sub(r"\W", "_", rest)


for _url in sorted(FILES):
    bp.add_url_rule(_url, endpoint=_endpoint(_url), view_func=console_file, methods=["GET"])


@bp.after_request
def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response
