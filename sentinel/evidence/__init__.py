"""Evidence: the report, the bundle and the Prometheus metrics."""
