"""sentinel: sidecar egress sentinel and network policy enforcer."""

__version__ = "0.1.0"
