"""Kernel counter snapshots for the monitor's heartbeats and the report: NFLOG packets per
family and per-entry allowlist set counters, read from what netfilter.read_state returns."""

from __future__ import annotations

from typing import Any

from sentinel.enforce.kernelstate import KernelState


def nflog_packets(state: KernelState) -> dict[int, int]:
    """Packets the kernel logged to NFLOG, per family (the one place they are summed): the
    iptables NFLOG rules plus the netdev table's log rules (ARP and non-IP frames: family 4)."""
    nflog = {4: 0, 6: 0}
    for (family, line), (packets, _bytes) in state.counters.items():
        if "-j NFLOG" in line:
            nflog[family] += packets
    for family, packets in state.netdev_counters.items():
        nflog[family] += packets
    return nflog


MAX_SET_ENTRIES = 1000  # per snapshot: entries with traffic, busiest first


def kernel_snapshot(backend: str | None = None) -> dict[str, Any]:
    """NFLOG packets per family and per-entry set counters (entries with traffic only)."""
    from sentinel.enforce import netfilter  # the daemon's read; `report` needs only nflog_packets

    applied = applied_info()
    state = netfilter.read_state(backend or applied.get("backend") or netfilter.DEFAULT_BACKEND)
    nflog = {str(family): n for family, n in nflog_packets(state).items()}
    busy = sorted(
        ((entry, pb) for (_set, entry), pb in state.set_counters.items() if pb[0]),
        key=lambda item: -item[1][0],
    )
    return {
        "ruleset_sha256": state.sha256() if state.present else None,
        "applied_at": applied.get("applied_at"),  # counters restart at every apply
        "nflog": nflog,
        "sets": {entry: list(pb) for entry, pb in busy[:MAX_SET_ENTRIES]},
        "sets_truncated": len(busy) > MAX_SET_ENTRIES,
    }


def applied_info() -> dict[str, Any]:
    """What is in force right now, as `sentinel apply` recorded it (cheap: one small file)."""
    from sentinel.store.state import APPLIED, read_json

    try:
        applied = read_json(APPLIED) or {}
    except Exception:  # noqa: BLE001 - a heartbeat must never die on a bad state file
        applied = {}
    keys = ("ruleset_sha256", "policy_sha256", "mode", "applied_at", "backend")
    return {k: applied.get(k) for k in keys}
