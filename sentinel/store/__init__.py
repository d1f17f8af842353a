"""The state directory: the event store and the applied-state record."""
