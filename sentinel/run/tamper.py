"""The daemon's tamper check: compare the kernel with the expected ruleset; on drift re-apply,
re-check, report.

A repair that fails (the apply raises, or the kernel still differs when read again) is a
`tamper_unrepaired` P1 on the first failure of a streak; the check is retried every
REPAIR_RETRY seconds and the eventual repair is a `tamper` event that says how many attempts it
took. Runs under the daemon's kernel lock, against its `expected` ruleset.
"""

from __future__ import annotations

from typing import Any

from sentinel.enforce import netfilter
from sentinel.enforce.netdev import read_link
from sentinel.enforce.render import Ruleset, held_entries, render_rules
from sentinel.errors import SentinelError
from sentinel.evidence import metrics
from sentinel.log import get_logger
from sentinel.store.events import Event

REPAIR_RETRY = 2.0  # seconds between repair attempts while a tamper repair keeps failing
log = get_logger("daemon")


class TamperCheck:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.failures = 0  # failed repairs in a row

    def interval(self, tamper_interval: float) -> float:
        """The tamper interval; while a repair keeps failing, retry at least every 2 s."""
        return min(tamper_interval, REPAIR_RETRY) if self.failures else tamper_interval

    def check(self) -> bool:
        """True when the kernel had drifted (repaired or not)."""
        daemon = self.daemon
        with daemon.kernel:
            if daemon.expected is None:
                return False
            self._follow_link()
            want = daemon.expected.sha256()
            try:
                state = netfilter.read_state(daemon.backend)
            except SentinelError as exc:
                return self._failed(want, None, f"cannot read the kernel: {exc.message}", {})
            found = state.sha256()
            if found == want:
                metrics.set_rules_in_sync(True)
                if self.failures:  # put right from outside: still say it was repaired
                    self._repaired(want, found, {"repaired_by": "outside"})
                return False
            metrics.set_rules_in_sync(False)
            detail = drift(daemon.expected, state)
            error = self._reapply()
            if error is not None:
                return self._failed(want, found, error, detail)
        self._repaired(want, found, detail)
        return True

    def _follow_link(self) -> None:
        """An interface or address came or went: the expected ruleset follows it."""
        daemon = self.daemon
        link = read_link()
        if link != daemon.expected.link:
            held = held_entries(daemon.expected)
            daemon.expected = render_rules(daemon.ctx.policy, daemon.ctx.pins.pins(), link, held)

    def _reapply(self) -> str | None:
        """Re-apply the expected ruleset and read the kernel again; the error, if it differs."""
        daemon = self.daemon
        want = daemon.expected.sha256()
        daemon.snapshot_counters()
        error = None
        try:
            applied = netfilter.apply(daemon.expected, daemon.backend)
        except SentinelError as exc:
            applied, error = None, exc.message
        try:
            after: str | None = netfilter.read_state(daemon.backend).sha256()
        except SentinelError as exc:
            after, error = None, error or f"cannot read the kernel: {exc.message}"
        if after != want:
            return error or "the kernel still differs after re-applying"
        metrics.set_rules_in_sync(True)
        if applied is not None:
            full, reset_at = applied.rules_replaced, applied.rules_reset_at
            daemon.record(daemon.expected, applied.created_tables, full, reset_at)
        return None

    def _repaired(self, want: str, found: str, detail: dict[str, Any]) -> None:
        failures, self.failures = self.failures, 0
        detail = {"expected": want, "found": found, "repaired": True, **detail}
        if failures:
            detail["failed_attempts"] = failures
        self.daemon.ctx.emit(Event(layer="tamper", kind="tamper", verdict="blocked", detail=detail))

    def _failed(self, want: str, found: str | None, error: str, detail: dict[str, Any]) -> bool:
        metrics.set_rules_in_sync(False)
        metrics.observe_error("apply")
        self.failures += 1
        log.error("tamper_repair_failed", error=error, attempt=self.failures)
        if self.failures == 1:  # once per streak: the retries are counted, not paged
            detail = {
                "expected": want,
                "found": found,
                "repaired": False,
                "error": error,
                "message": error,
                "retry_every_s": REPAIR_RETRY,
                **detail,
            }
            event = Event(
                layer="tamper", kind="tamper_unrepaired", verdict="blocked", detail=detail
            )
            self.daemon.ctx.emit(event)
        return True


def drift(expected: Ruleset, state: Any) -> dict[str, Any]:
    """A short, human-readable account of what differs (for the tamper event)."""
    out: dict[str, Any] = {}
    for family in (4, 6):
        want = set(expected.save_text(family).splitlines())
        have = set(state.text.get(family, "").splitlines())
        if want != have:
            out[f"v{family}_missing"] = sorted(want - have)[:20]
            out[f"v{family}_extra"] = sorted(have - want)[:20]
    if expected.netdev != getattr(state, "netdev", ""):
        want, have = set(expected.netdev.splitlines()), set(state.netdev.splitlines())
        out["netdev_missing"], out["netdev_extra"] = (
            sorted(want - have)[:20],
            sorted(have - want)[:20],
        )
        out["link"] = {"devices": list(expected.link.devices)}
    out.update(_set_drift(expected, state))
    return out


def _set_drift(expected: Ruleset, state: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    want_sets = {s.name: set(s.entries) for s in expected.sets}
    have_sets = {s.name: set(s.entries) for s in state.sets}
    for name in sorted(set(want_sets) | set(have_sets)):
        missing = want_sets.get(name, set()) - have_sets.get(name, set())
        extra = have_sets.get(name, set()) - want_sets.get(name, set())
        if missing or extra or name not in have_sets:
            out[f"{name}"] = {
                "missing": sorted(missing)[:20],
                "extra": sorted(extra)[:20],
                "present": name in have_sets,
            }
    return out
