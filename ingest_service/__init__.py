"""ingest_service."""
