"""The sentinel's own sockets: marked so the ruleset exempts them from deny-all and the DNS
redirect. Setting a mark needs CAP_NET_ADMIN, which the app does not have, so the app cannot
forge the exemption (tests/test_bypass_network.py proves it)."""

from __future__ import annotations

import socket

SO_MARK = getattr(socket, "SO_MARK", 36)  # Linux value; older Pythons lack the constant


def marked_socket(family: int, kind: int, mark: int) -> socket.socket:
    """A new socket carrying `mark` before it sends anything (raises PermissionError without
    CAP_NET_ADMIN)."""
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    except BaseException:
        sock.close()
        raise
    return sock


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET
