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
from storage_nodes.cluster import MAX_QUERY_ROWS, Point, Rejected, StorageCluster, series_key
from storage_nodes.lineproto import reading_to_line
from storage_nodes.ring import HashRing
from storage_nodes.server import influxd_command

__all__ = [
    "MAX_QUERY_ROWS",
    "DatabaseNotFound",
    "FatalStorageError",
    "HashRing",
    "InfluxNode",
    "Point",
    "Rejected",
    "RetriableStorageError",
    "StorageCluster",
    "StorageError",
    "influxd_command",
    "reading_to_line",
    "series_key",
]
