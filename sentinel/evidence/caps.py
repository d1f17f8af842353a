"""Which processes in this network namespace could send frames netfilter never sees.

CAP_NET_RAW opens AF_PACKET sockets (frames that skip the IP stack; only the netdev egress
table sees them) and, since Linux 5.17, sets SO_MARK (the sentinel's own exemption mark);
CAP_NET_ADMIN can rewrite the rules themselves. Read from /proc: a process counts when its
/proc/PID/ns/net is this namespace. Only what this PID namespace can see is scanned (in
compose the app's processes are invisible to the sentinel container: `visible` says so).
The sentinel's own processes and their children are left out."""

from __future__ import annotations

import os
from typing import Any

CAPS = {12: "CAP_NET_ADMIN", 13: "CAP_NET_RAW"}


def _status(pid: str) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _safe(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)[:64]


def scan(exclude: set[int] | None = None) -> dict[str, Any]:
    """{processes_visible, holders: [{pid, name, uid, caps}], unreadable}."""
    exclude = {os.getpid(), *(exclude or set())}
    mine = os.stat("/proc/self/ns/net")
    found: dict[int, dict[str, str]] = {}
    unreadable = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
            if (ns.st_dev, ns.st_ino) != (mine.st_dev, mine.st_ino):
                continue
            found[int(entry)] = _status(entry)
        except FileNotFoundError:
            continue  # exited meanwhile
        except OSError:
            unreadable += 1
    holders = []
    for pid, status in sorted(found.items()):
        if _descends_from(pid, found, exclude):
            continue
        effective = int(status.get("CapEff", "0"), 16)
        caps = [name for bit, name in CAPS.items() if effective >> bit & 1]
        if caps:
            uid = status.get("Uid", "").split()
            holders.append(
                {
                    "pid": pid,
                    "name": _safe(status.get("Name", "?")),
                    "uid": int(uid[1]) if len(uid) > 1 else None,
                    "caps": caps,
                }
            )
    return {"processes_visible": len(found), "holders": holders, "unreadable": unreadable}


def _descends_from(pid: int, found: dict[int, dict[str, str]], exclude: set[int]) -> bool:
    for _ in range(64):  # bounded walk up the parent chain
        if pid in exclude:
            return True
        status = found.get(pid)
        if status is None:
            return False
        pid = int(status.get("PPid", "0") or 0)
    return False


def sentinel_pids() -> set[int]:
    """The running daemon's pid, from its state file (its children are excluded with it)."""
    from sentinel.store.state import read_json

    try:
        pid = (read_json("daemon.json") or {}).get("pid")
    except Exception:  # noqa: BLE001 - evidence never fails on a bad state file
        return set()
    return {int(pid)} if isinstance(pid, int) else set()


def summary() -> dict[str, Any]:
    """For `status` and the report: the scan plus a one-line verdict."""
    found = scan(sentinel_pids())
    found["raw_capable"] = bool(found["holders"])
    found["note"] = (
        f"{len(found['holders'])} process(es) in the app's namespace hold CAP_NET_RAW or "
        "CAP_NET_ADMIN: they can send frames netfilter does not see (AF_PACKET with "
        "PACKET_QDISC_BYPASS on kernels without the netdev egress hook), forge the "
        "exemption mark (SO_MARK) or change the rules; drop these capabilities (docs/deploy.md)"
        if found["holders"]
        else "no visible process in the app's namespace holds CAP_NET_RAW or CAP_NET_ADMIN"
    )
    return found
