"""The console's files and the URL paths they are served at: every file under ``static/``
at ``/console/<its path>``, and the page itself at ``/console/`` and ``/console``.

Pure (no Flask): :mod:`api.auth` reads :data:`PUBLIC_PATHS` from here. One exact path per
file, not a prefix, so the public set stays a set of paths the URL map, ``GET /`` and the
OpenAPI document all agree on, and a path that is not a file is never public.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/console"
INDEX = "index.html"
#: Content types by suffix; a file of another suffix is not served.
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    "": "text/plain",  # LICENSE
}


def _files(root: Path) -> dict[str, Path]:
    """``{url path: file}`` of every servable file under ``root``, and the page's own two."""
    found = {
        f"{PREFIX}/{p.relative_to(root).as_posix()}": p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in TYPES and not p.name.startswith(".")
    }
    if (root / INDEX).is_file():
        found[PREFIX + "/"] = found[PREFIX] = root / INDEX
    return found


FILES = _files(STATIC)
#: What the console serves without a token: its files only (every data call needs one).
PUBLIC_PATHS = frozenset(FILES)


def content_type(path: Path) -> str:
    return TYPES[path.suffix]
