"""Pins: the addresses an allowlisted name may be reached at, and their lifecycle.

A pin is born from an upstream answer (TTL clamped to the policy's min/max), refreshed before
it expires, and when the addresses change the old ones stay allowed for `stale_grace` so
established and pooled connections do not break. While the upstream is down the last good
addresses keep being served until `stale_grace` after their expiry, then the name fails
closed (no pins, SERVFAIL). Every change is pushed to `on_change(pins)` *before* the caller
gets the addresses, so an answer is never released ahead of the rule that allows it.
One pin, and the per-record-type half of its lifecycle, is pinstate.py.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from sentinel.policy.load import DnsSettings, IPAddress
from sentinel.resolver.pinstate import Pin, dns_event, expire_types, settle_types, type_deadlines
from sentinel.resolver.rebinding import is_external, normalize, rebinding_filter  # noqa: F401
from sentinel.resolver.upstream import (  # noqa: F401 - re-exported for callers and tests
    TYPES,
    Resolution,
    Upstream,
    UpstreamError,
    parse_upstream,
    resolv_conf_upstream,
    resolve,
)
from sentinel.store.events import Event

REFRESH_AT = 0.8  # a pin is refreshed at 80 % of its (clamped) TTL


Emit = Callable[[Event], None]
OnChange = Callable[[dict[str, list[IPAddress]]], None]


class PinManager:
    """Owns every pin. Thread-safe; `tick()` is driven by the daemon's refresher thread."""

    def __init__(
        self,
        settings: DnsSettings,
        upstream: Upstream,
        names: Iterable[str],
        emit: Emit,
        on_change: OnChange,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.upstream, self.emit = settings, upstream, emit
        self.on_change, self.clock = on_change, clock
        self._pins: dict[str, Pin] = {normalize(n): Pin() for n in names}
        self._names = frozenset(self._pins)  # read on every query: no per-query set building
        self._commit = threading.Lock()  # orders on_change calls: the kernel gets the latest
        self._batching, self._dirty = False, False

    # --- queries --------------------------------------------------------------------
    def names(self) -> frozenset[str]:
        return self._names

    def pins(self) -> dict[str, list[IPAddress]]:
        return {name: pin.allowed() for name, pin in self._pins.items() if pin.allowed()}

    def current(self) -> dict[str, list[IPAddress]]:
        """The addresses each name is pinned to now, without the retiring ones (a one-shot
        apply: it neither keeps an old answer beyond its grace nor widens the new one)."""
        return {n: list(p.addresses) for n, p in self._pins.items() if p.addresses}

    def pin(self, name: str) -> Pin | None:
        return self._pins.get(normalize(name))

    def valid_until(self) -> dict[str, dict[str, float]]:
        """Per name and type, the wall-clock end of the last good answer (for applied.json:
        a later apply or start keeps these addresses while a lookup fails, until the grace)."""
        offset = time.time() - self.clock()
        out: dict[str, dict[str, float]] = {}
        for name, pin in self._pins.items():
            for rdtype, _, family in TYPES:
                if any(a.version == family for a in pin.addresses) and family in pin.valid_until:
                    out.setdefault(name, {})[rdtype] = round(pin.valid_until[family] + offset, 3)
        return out

    def adopt(self, applied: dict | None) -> list[str]:
        """Start from what is applied now (applied.json `pins` + `pins_valid_until`): names that
        then fail to resolve keep those addresses until `stale_grace` past their validity,
        exactly as in a running daemon. Returns the names adopted."""
        if not applied:
            return []
        offset = self.clock() - time.time()
        adopted = []
        for name, until in (applied.get("pins_valid_until") or {}).items():
            pin = self._pins.get(normalize(name))
            addresses = [ipaddress.ip_address(a) for a in (applied.get("pins") or {}).get(name, [])]
            if pin is None or pin.resolved or not addresses:
                continue
            families = {rdtype: family for rdtype, _, family in TYPES}
            keep = [
                a for a in addresses if any(families[t] == a.version for t in until)
            ]  # only the types that came with a validity
            if not keep:
                continue
            pin.addresses = tuple(sorted(set(keep), key=lambda a: (a.version, int(a))))
            pin.valid_until = {families[t]: float(u) + offset for t, u in until.items()}
            pin.expires = min(pin.valid_until.values())
            pin.ttl, pin.refresh_at, pin.resolved = self.settings.min_ttl, 0.0, True
            adopted.append(normalize(name))
        return adopted

    def lookup(self, name: str) -> tuple[tuple[IPAddress, ...], float, bool] | None:
        """(addresses, TTL to answer with, nxdomain) for an allowlisted name, pin in force;
        None when the name fails closed (upstream down past stale_grace, or never resolved)."""
        pin = self._pins.get(normalize(name))
        if pin is None:
            return None
        now = self.clock()
        # While the upstream is failing nothing waits for it: a stale pin is served at once,
        # a name without one gets SERVFAIL at once (the refresher keeps retrying); blocking
        # each query on an upstream timeout would break the app before the grace ran out.
        if not pin.failing and (not pin.resolved or now >= pin.expires):
            self.refresh(normalize(name))
            now = self.clock()
        if not pin.resolved:
            return None
        remaining = pin.expires - now
        if remaining <= 0:  # stale but within grace: short TTL so the app asks again soon
            return pin.addresses, min(self.settings.min_ttl, 5.0), pin.nxdomain
        return pin.addresses, remaining, pin.nxdomain

    # --- lifecycle ------------------------------------------------------------------
    def set_names(self, names: Iterable[str]) -> None:
        """A reloaded policy: new names start unresolved, dropped names lose their pins."""
        wanted = {normalize(n) for n in names}
        for name in wanted - set(self._pins):
            self._pins[name] = Pin()
        for name in set(self._pins) - wanted:
            del self._pins[name]
        self._names = frozenset(self._pins)

    def refresh(self, name: str) -> bool:
        """Re-resolve one name now; returns whether the upstream answered."""
        pin = self._pins.get(name)
        if pin is None:
            return False
        with pin.lock:
            if pin.resolved and self.clock() < pin.refresh_at:
                return True  # another thread refreshed it while we waited for the lock
            try:
                res = resolve(self.upstream, name, self.settings)
            except UpstreamError as exc:
                self._failed(name, pin, str(exc))
                return False
            self._resolved(name, pin, res)
            return True

    def refresh_all(self, names: Iterable[str] | None = None, batch: bool = False) -> None:
        """Resolve many names in parallel (start-up, reload): one slow name does not add up.
        `batch`: push the pins once at the end instead of per name (start-up only: no answer
        may be released meanwhile, as none is before the first apply)."""
        todo = [normalize(n) for n in (self._pins if names is None else names)]
        self._batching, self._dirty = batch, False
        try:
            if len(todo) > 1 and isinstance(self.upstream, Upstream):
                self._refresh_pipelined(todo)
            else:
                with ThreadPoolExecutor(max_workers=min(16, max(1, len(todo)))) as pool:
                    list(pool.map(self.refresh, todo))
        finally:
            self._batching = False
        if self._dirty:
            self._push()

    def _refresh_pipelined(self, todo: list[str]) -> None:
        """Every question of every name over one socket (resolver/bulk.py); then each pin is
        updated under its lock and pushed as `refresh` would (a query waiting on the lock gets
        its answer only after the push)."""
        from sentinel.resolver.bulk import resolve_many

        for name, res in resolve_many(self.upstream, todo, self.settings).items():
            pin = self._pins.get(name)
            if pin is None:
                continue  # dropped by a reload meanwhile
            with pin.lock:
                if isinstance(res, UpstreamError):
                    self._failed(name, pin, str(res))
                else:
                    self._resolved(name, pin, res)

    def tick(self) -> float:
        """Refresh what is due, retire what is over; returns seconds until the next due item."""
        now = self.clock()
        due = [name for name, pin in list(self._pins.items()) if now >= pin.refresh_at]
        if due:
            self.refresh_all(due)
        self._expire(self.clock())
        due = [p.refresh_at for p in self._pins.values()]
        due += [t for p in self._pins.values() for t in p.retiring.values()]
        due += [p.expires + self.settings.stale_grace for p in self._pins.values() if p.stale]
        due += [
            t for p in self._pins.values() for t in type_deadlines(p, self.settings.stale_grace)
        ]
        return max(0.05, min(due, default=now + 1.0) - self.clock())

    def _resolved(self, name: str, pin: Pin, res: Resolution) -> None:
        now = self.clock()
        if res.dropped:
            self.emit(
                dns_event(
                    "dns_rebinding",
                    name,
                    "blocked",
                    dropped=list(res.dropped),
                    kept=[str(a) for a in res.addresses],
                )
            )
        if pin.failing or pin.stale:
            self.emit(dns_event("dns_upstream_recovered", name, "info"))
        old = set(pin.addresses)
        grace = self.settings.stale_grace
        kept, over = settle_types(name, pin, res, now, grace, self.upstream, self.emit)
        new = set(res.addresses) | set(kept)
        for address in old - new - set(over):  # a type past its grace does not retire again
            pin.retiring[address] = now + grace
        for address in new:
            pin.retiring.pop(address, None)
        pin.addresses = tuple(sorted(new, key=lambda a: (a.version, int(a))))
        pin.ttl, pin.nxdomain = res.ttl, res.nxdomain
        pin.expires, pin.refresh_at = now + res.ttl, now + REFRESH_AT * res.ttl
        pin.resolved, pin.failing, pin.stale = True, False, False
        if old != new:
            started = self.clock()
            self._push()
            self.emit(
                dns_event(
                    "pin_changed",
                    name,
                    "info",
                    added=sorted(map(str, new - old)),
                    removed=sorted(map(str, old - new)),
                    grace_s=self.settings.stale_grace,
                    ttl_s=res.ttl,
                    cnames=list(res.cnames),
                    apply_ms=round((self.clock() - started) * 1000, 2),
                )
            )

    def _failed(self, name: str, pin: Pin, error: str) -> None:
        now = self.clock()
        pin.refresh_at = now + min(5.0, max(0.5, pin.ttl / 4 if pin.ttl else 1.0))
        pin.error = error
        if not pin.failing:
            pin.failing = True
            self.emit(
                dns_event(
                    "dns_upstream_failing",
                    name,
                    "info",
                    error=error,
                    upstream=f"{self.upstream.address}:{self.upstream.port}",
                )
            )

    def expire(self) -> None:
        """Retire what is over now (the refresher does this on every tick)."""
        self._expire(self.clock())

    def _expire(self, now: float) -> None:
        changed = False
        for name, pin in self._pins.items():
            over = [a for a, until in pin.retiring.items() if until <= now]
            for address in over:
                del pin.retiring[address]
                changed = True
            if pin.resolved and pin.failing and now >= pin.expires and not pin.stale:
                pin.stale = True  # serving the last good answer past its TTL
                self.emit(
                    dns_event(
                        "stale_pins",
                        name,
                        "info",
                        addresses=[str(a) for a in pin.addresses],
                        fail_closed_in_s=self.settings.stale_grace,
                    )
                )
            if expire_types(name, pin, now, self.settings.stale_grace, self.emit):
                changed = True
            if pin.stale and now >= pin.expires + self.settings.stale_grace:
                self.emit(
                    dns_event(
                        "pins_expired", name, "blocked", addresses=[str(a) for a in pin.addresses]
                    )
                )
                pin.addresses, pin.resolved, pin.stale = (), False, False
                changed = True
        if changed:
            self._push()

    def _push(self) -> None:
        if self._batching:
            self._dirty = True
            return
        with self._commit:
            self.on_change(self.pins())
