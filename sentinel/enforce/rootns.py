"""The one refusal every kernel change starts with: never the machine's own network namespace."""

from __future__ import annotations

import os

from sentinel.errors import SentinelError

_INIT_NET_INO = 0xEFFFFFF9  # init_net's fixed inode on kernels that reserve one


def in_root_netns() -> bool:
    """Is this process in the machine's own network namespace?

    Kernel threads (kthreadd, PID 2) always live there; inside a container's PID namespace
    PID 2 is not kthreadd and the host's namespace is not visible, so the answer is no.
    """
    me = os.stat("/proc/self/ns/net").st_ino
    if me == _INIT_NET_INO:
        return True
    try:
        with open("/proc/2/comm") as f:
            if f.read().strip() == "kthreadd":
                return me == os.stat("/proc/2/ns/net").st_ino
    except OSError:
        pass
    return False


def ensure_not_root_netns() -> None:
    """Refuse to touch netfilter in the machine's own namespace: it would cut the host off."""
    if os.environ.get("SENTINEL_ALLOW_ROOT_NETNS") == "1":
        return
    if in_root_netns():
        raise SentinelError(
            "refusing to change netfilter in the machine's root network namespace: run inside "
            "the app's namespace (ip netns exec NAME, or network_mode: service:APP in compose); "
            "SENTINEL_ALLOW_ROOT_NETNS=1 overrides this on a host that is only the app"
        )
