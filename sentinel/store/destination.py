"""The one way a destination is written (reports, alerts, explain), in a module of its own so
the report's counting (evidence/tally.py) needs no Event model (store/model.py re-exports it)."""

from __future__ import annotations


def destination_text(
    name: str | None, ip: str | None, port: int | None, protocol: str | None
) -> str:
    """host:port/protocol, an IPv6 literal in brackets, '?' for what is unknown."""
    host = name or ip or "?"
    if ":" in host:
        host = f"[{host}]"
    port_text = f":{port}" if port is not None else ""
    return f"{host}{port_text}/{protocol or '?'}"
