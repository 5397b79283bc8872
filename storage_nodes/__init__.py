"""storage_nodes."""
