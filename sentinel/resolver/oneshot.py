"""Pins for a one-shot `sentinel apply`: the same marked-socket upstream resolver as `run`.

The system resolver is no use here: once the deny is in force, the app namespace's port-53
traffic is redirected to the sentinel's resolver port, where nothing listens without a daemon.
The upstream (policy `dns.upstream`; `auto` = resolv.conf now) is asked over marked sockets,
which skip that redirect. A name that does not resolve keeps the addresses applied now (read from
applied.json) until `stale_grace` past the end of their last good answer, with a warning: a
re-apply never narrows the allowlist because a lookup failed, nor widens it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sentinel.policy.load import IPAddress, Policy
from sentinel.resolver.upstreamconf import parse_upstream

if TYPE_CHECKING:
    from sentinel.resolver.upstream import Upstream
    from sentinel.store.events import Event


@dataclass
class OneShot:
    pins: dict[str, list[IPAddress]] = field(default_factory=dict)
    valid_until: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # names left without any address


def upstream_for(policy: Policy) -> Upstream:
    from sentinel.resolver.upstream import Upstream

    address, port = parse_upstream(policy.dns.upstream)
    return Upstream(address, port, mark=policy.mark)


def resolve_pins(policy: Policy, skip: set[str], applied: dict | None) -> OneShot:
    names = [h for h in policy.hostnames if h not in skip]
    if not names:  # nothing to ask: no dnspython, but the same refusal of a bad dns.upstream
        parse_upstream(policy.dns.upstream)
        return OneShot()
    from sentinel.resolver.pins import TYPES, PinManager

    upstream = upstream_for(policy)
    dropped: dict[str, list[str]] = {}  # answers the rebinding filter kept out, per name

    def note(event: Event) -> None:
        if event.kind == "dns_rebinding" and event.dst_name:
            dropped.setdefault(event.dst_name, []).extend(event.detail.get("dropped", []))

    manager = PinManager(policy.dns, upstream, names, note, lambda _p: None)
    manager.adopt(applied)
    manager.refresh_all(batch=True)
    manager.expire()
    out = OneShot(pins=manager.current(), valid_until=manager.valid_until())
    grace = policy.dns.stale_grace
    offset = time.time() - manager.clock()
    for name in names:
        pin = manager.pin(name)
        assert pin is not None
        if pin.failing:
            if pin.addresses:
                until = _iso(pin.expires + grace + offset)
                shown = ", ".join(map(str, pin.addresses))
                out.warnings.append(
                    f"{name!r} did not resolve ({pin.error}); keeping the addresses applied now "
                    f"({shown}) until {until} (dns.stale_grace)"
                )
            else:
                out.warnings.append(
                    f"{name!r} did not resolve ({pin.error}); it stays denied until it does"
                )
        for rdtype, _, family in TYPES:
            error = pin.failing_types.get(rdtype)
            kept = [str(a) for a in pin.addresses if a.version == family]
            if error is not None and kept:
                until = _iso(pin.valid_until[family] + grace + offset)
                out.warnings.append(
                    f"{name!r}: the {rdtype} lookup failed ({error}); keeping the applied "
                    f"{rdtype} addresses ({', '.join(kept)}) until {until} (dns.stale_grace)"
                )
        if not pin.addresses:
            out.missing.append(name)
    for name, answers in dropped.items():
        shown = ", ".join(dict.fromkeys(answers))
        out.warnings.append(
            f"{name!r}: {len(set(answers))} answer(s) not pinned ({shown}): kept out by the "
            "DNS rebinding filter (docs/dns.md)"
        )
    return out


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
