"""Configuration and command line of one local InfluxDB 1.x server (``influxd``)."""

from __future__ import annotations

from pathlib import Path

from vigil.atomic import write_atomic

INFLUXD = "influxd"


def render_influxd_conf(
    data_dir: Path,
    http_port: int,
    rpc_port: int,
    host: str = "127.0.0.1",
    tls: tuple[Path, Path] | None = None,
) -> str:
    """An influxd.conf for one ring server: its own directories, the backup RPC service on
    a private loopback port (InfluxDB 1.6 cannot switch it off), authentication on, pprof
    off, WAL fsynced on every write (a 204 from /write means on disk), no phoning home.
    ``tls``: (certificate, key): the HTTP API over HTTPS only."""
    d = data_dir.resolve()
    https = ""
    if tls is not None:
        cert, key = (p.resolve() for p in tls)
        https = (
            f'  https-enabled = true\n  https-certificate = "{cert}"\n'
            f'  https-private-key = "{key}"\n'
        )
    return f"""reporting-disabled = true
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{d}/meta"
  logging-enabled = false

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  wal-fsync-delay = "0s"
  index-version = "inmem"
  # No silent caps on series or tag values: a reading past them would be refused.
  max-series-per-database = 0
  max-values-per-tag = 0
  query-log-enabled = false
  trace-logging-enabled = false

[retention]
  enabled = true

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{host}:{http_port}"
  # No anonymous access: every request needs a user (storage_nodes/provision.py makes
  # them). The first admin can be created without credentials only while none exists.
  auth-enabled = true
  pprof-enabled = false
  log-enabled = false
  write-tracing = false
{https}
[logging]
  level = "warn"

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false
"""


def influxd_command(
    data_dir: Path,
    http_port: int,
    rpc_port: int,
    host: str = "127.0.0.1",
    tls: tuple[Path, Path] | None = None,
) -> list[str]:
    """Write the server's config into ``data_dir`` and return the command that runs it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "influxd.conf"
    write_atomic(conf, render_influxd_conf(data_dir, http_port, rpc_port, host, tls))
    return [INFLUXD, "run", "-config", str(conf)]
