"""Users and databases on the InfluxDB servers of the ring (run with the admin credential).

Every server runs with ``auth-enabled``. On each one this makes, idempotently:

- the admin user (created without credentials while the server has no user at all, the one
  thing InfluxDB 1.x allows then);
- the database;
- the services' user (``storage.username``): ALL on the database and nothing else, so it
  cannot create or drop databases or users;
- a read-only user for people looking at the data (READ on the database).

Passwords are files (generated once by the launcher, mode 0600); an existing user's password
is set again from its file, so the files stay the truth. Values are InfluxQL-quoted; user and
database names are checked names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from storage_nodes.client import InfluxNode, RetriableStorageError, StorageError
from storage_nodes.lineproto import quote_literal
from vigil.atomic import load_or_create_secret
from vigil.names import check_name
from vigil.settings import StorageNode, StorageSettings

log = logging.getLogger(__name__)

ADMIN_USER = "vigil-admin"
SERVICE_USER = "vigil-service"
VIEWER_USER = "vigil-viewer"
NO_USERS_YET = "create admin user first"


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    password: str


def _ident(name: str) -> str:
    return '"' + check_name(name, "InfluxDB name") + '"'


def _run(node: InfluxNode, q: str, *, ok: Iterable[str] = ()) -> None:
    """Run one statement; an error whose text starts with one of ``ok`` is not one."""
    try:
        node.query(q, None, method="POST")
    except StorageError as exc:
        if not any(exc.reason.removeprefix("query error: ").startswith(o) for o in ok):
            raise


def provision_server(
    url: str,
    *,
    name: str,
    admin: Credential,
    database: str,
    service: Credential,
    viewer: Credential | None = None,
    timeout_s: float = 10.0,
    ca_file: Path | None = None,
) -> None:
    """Make the admin (if the server has no user yet), the services' user and the viewer
    with their passwords from the files, and the database with their grants, on one
    server. Raises StorageError if the server refuses."""
    anonymous = InfluxNode(name, url, timeout_s, ca_file=ca_file)
    as_admin = admin_node(name, url, admin, timeout_s, ca_file=ca_file)
    try:
        try:
            as_admin.query("SHOW USERS", None)
        except StorageError as exc:
            if NO_USERS_YET not in exc.reason:
                raise
            _run(
                anonymous,
                f"CREATE USER {_ident(admin.username)} WITH PASSWORD "
                f"{quote_literal(admin.password)} WITH ALL PRIVILEGES",
            )
            log.info("%s: created the admin user %s", name, admin.username)
        for cred in [service] + ([viewer] if viewer else []):
            user = _ident(cred.username)
            _run(
                as_admin,
                f"CREATE USER {user} WITH PASSWORD {quote_literal(cred.password)}",
                ok=("user already exists",),
            )
            _run(as_admin, f"SET PASSWORD FOR {user} = {quote_literal(cred.password)}")
        grant_database(as_admin, database, service.username, viewer.username if viewer else None)
    finally:
        anonymous.close()
        as_admin.close()


def admin_node(
    name: str, url: str, admin: Credential, timeout_s: float = 10.0, ca_file: Path | None = None
) -> InfluxNode:
    return InfluxNode(
        name, url, timeout_s, username=admin.username, password=admin.password, ca_file=ca_file
    )


def grant_database(
    as_admin: InfluxNode, database: str, service_user: str, viewer_user: str | None = None
) -> None:
    """Create ``database`` (if needed) and grant ALL on it to the services' user and READ
    to the viewer; ``as_admin`` authenticates as the admin."""
    _run(as_admin, f"CREATE DATABASE {_ident(database)}")
    _run(as_admin, f"GRANT ALL ON {_ident(database)} TO {_ident(service_user)}")
    if viewer_user:
        _run(as_admin, f"GRANT READ ON {_ident(database)} TO {_ident(viewer_user)}")


@dataclass(frozen=True, slots=True)
class ClusterCredentials:
    admin: Credential
    service: Credential
    viewer: Credential


def credentials(storage: StorageSettings, secrets_dir: Path) -> ClusterCredentials:
    """The admin, services' and viewer credentials, generated once: the services' password
    where ``storage.password_file`` says, the others as ``influxdb-<user>.password`` in
    ``secrets_dir``."""
    service_file = storage.password_file or secrets_dir / f"influxdb-{storage.username}.password"

    def cred(user: str, path: Path) -> Credential:
        return Credential(user, load_or_create_secret(path))

    return ClusterCredentials(
        admin=cred(ADMIN_USER, secrets_dir / f"influxdb-{ADMIN_USER}.password"),
        service=cred(storage.username, service_file),
        viewer=cred(VIEWER_USER, secrets_dir / f"influxdb-{VIEWER_USER}.password"),
    )


def provision_node(
    node: StorageNode, storage: StorageSettings, creds: ClusterCredentials, timeout_s: float = 30
) -> None:
    """:func:`provision_server` for one node of the ring, waiting up to ``timeout_s`` for a
    server that is still starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            provision_server(
                node.url,
                name=node.name,
                admin=creds.admin,
                database=storage.database,
                service=creds.service,
                viewer=creds.viewer,
                timeout_s=storage.timeout_s,
                ca_file=storage.ca_file,
            )
            return
        except RetriableStorageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
