"""alert_engine."""
