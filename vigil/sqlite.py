"""What every SQLite file of Vigil shares (the agent's outbox, the engine's and notifier's
state, the API's database): one way to run statements as one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (the write lock at once, so a transaction never fails half way for
    a lock), COMMIT on leaving, ROLLBACK on any exception. The connection must be in
    autocommit mode (``isolation_level=None``)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
