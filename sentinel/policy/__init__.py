"""Policy input: load and validate the YAML, decide, watch for changes, export."""
