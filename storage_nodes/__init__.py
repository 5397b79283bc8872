"""Vigil's storage layer: InfluxDB 1.x servers on a consistent-hash ring with replicas.

The public API other components use: :class:`StorageCluster` (placement, replicated writes,
reads with failover), :class:`HashRing`, the typed errors, the line format of a reading and
the command line of a local server.
"""

from storage_nodes.client import (
    DatabaseNotFound,
    FatalStorageError,
    InfluxNode,
    RetriableStorageError,
    StorageError,
)
from storage_nodes.cluster import (
    MAX_QUERY_ROWS,
    Point,
    Rejected,
    SeriesUnavailable,
    StorageCluster,
    series_key,
)
from storage_nodes.lineproto import LineProtocolError, reading_to_line
from storage_nodes.provision import (
    ADMIN_USER,
    SERVICE_USER,
    VIEWER_USER,
    ClusterCredentials,
    Credential,
    admin_node,
    credentials,
    grant_database,
    provision_node,
    provision_server,
)
from storage_nodes.ring import HashRing
from storage_nodes.server import influxd_command

__all__ = [
    "ADMIN_USER",
    "MAX_QUERY_ROWS",
    "SERVICE_USER",
    "VIEWER_USER",
    "ClusterCredentials",
    "Credential",
    "DatabaseNotFound",
    "FatalStorageError",
    "HashRing",
    "InfluxNode",
    "LineProtocolError",
    "Point",
    "Rejected",
    "RetriableStorageError",
    "SeriesUnavailable",
    "StorageCluster",
    "StorageError",
    "admin_node",
    "credentials",
    "grant_database",
    "influxd_command",
    "provision_node",
    "provision_server",
    "reading_to_line",
    "series_key",
]
