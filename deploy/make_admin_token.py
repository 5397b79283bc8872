"""Create the API's admin bearer token once, for the docker-compose stack.

``python deploy/make_admin_token.py DIR`` writes ``DIR/admin.token`` (the token, for you to
read) and ``DIR/admin.token.sha256`` (its SHA-256 hex digest, the only thing the API reads),
both mode 0600. An existing token is kept; the digest is rewritten from it.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from pathlib import Path


def ensure_admin_token(folder: Path) -> Path:
    """The path of the token file, created with a fresh token if missing."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_file = folder / "admin.token"
    if not token_file.exists():
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
    token = token_file.read_text(encoding="utf-8").strip()
    digest_file = folder / "admin.token.sha256"
    digest_file.touch(mode=0o600)
    digest_file.write_text(hashlib.sha256(token.encode()).hexdigest() + "\n", encoding="utf-8")
    return token_file


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python deploy/make_admin_token.py SECRETS_DIR", file=sys.stderr)
        return 2
    try:
        token_file = ensure_admin_token(Path(args[0]))
    except OSError as exc:
        print(f"make_admin_token: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"admin token     {token_file.resolve()} (digest in admin.token.sha256)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
