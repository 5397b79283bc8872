"""Vigil's storage layer: InfluxDB 1.x servers on a consistent-hash ring with replicas.

The public API other components use: :class:`StorageCluster` (placement, replicated writes,
reads with failover), :class:`HashRing`, and the typed errors.
"""

from storage_nodes.client import (
    FatalStorageError,
    InfluxNode,
    RetriableStorageError,
    StorageError,
)
from storage_nodes.cluster import Point, StorageCluster, series_key
from storage_nodes.ring import HashRing

__all__ = [
    "FatalStorageError",
    "HashRing",
    "InfluxNode",
    "Point",
    "RetriableStorageError",
    "StorageCluster",
    "StorageError",
    "series_key",
]
