"""Apply a policy: the one sequence `sentinel apply` and `sentinel run` share.

    ruleset   prepare_ruleset (render + the policy's own tests), or the caller's ruleset
    kernel    netfilter.apply: one atomic commit per table and family (or, for a pin change,
              netfilter.update_sets against the previous ruleset: sets only, rules untouched)
    verify    the kernel's hash must equal the ruleset's, else SentinelError (nothing recorded)
    record    record_applied: the state `status`, the report and teardown read
    applied   the guard's allowlist (`sentinel apply`) or the daemon's applied hooks

A failure before `record` raises and records nothing; netfilter.apply itself never leaves the
kernel half-applied. `Around` carries what the daemon adds (counter snapshot, metrics, hooks,
state-write errors that must not undo an apply); its defaults are `sentinel apply`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sentinel.enforce import netfilter
from sentinel.enforce.netfilter import NOT_HELD
from sentinel.enforce.render import Link, Ruleset, held_after_pin_change, render_rules
from sentinel.errors import SentinelError
from sentinel.policy.decide import prepare_ruleset
from sentinel.policy.load import Policy
from sentinel.store.state import record_applied, state_dir


def write_guard_allowlist(policy: Policy, pins: dict) -> None:
    """The in-process guard reads the same pins as the kernel (`sentinel apply`'s last step)."""
    from sentinel.guard.compile import write_allowlist

    write_allowlist(policy, pins, state_dir())


def _nothing() -> None:
    return None


def _untimed(_seconds: float, _ok: bool) -> None:
    return None


@dataclass(frozen=True)
class Around:
    """What a caller adds around the sequence; the defaults are `sentinel apply`'s."""

    snapshot: Callable[[], None] = _nothing  # before a full apply (counters it may zero)
    timed: Callable[[float, bool], None] = _untimed  # seconds of kernel + verify, and ok
    state_failed: Callable[[SentinelError], None] | None = None  # None: a failed write raises
    applied: Callable[[Policy, dict], None] = write_guard_allowlist  # once recorded


@dataclass(frozen=True)
class Applied:
    """What one apply left in the kernel and the state directory."""

    policy: Policy
    ruleset: Ruleset
    pins: dict
    created_tables: tuple[str, ...]
    rules_replaced: bool  # False: only set entries changed (rule counters kept)
    seconds: float  # kernel + verify; 0 for a pin change


def pin_ruleset(policy: Policy, pins: dict, previous: Ruleset) -> Ruleset:
    """A pin change: the same rules with the new addresses; the addresses the move retired stay
    allowed for the flows already open to them (until the next full apply)."""
    new = render_rules(policy, pins, previous.link)
    return render_rules(policy, pins, previous.link, held_after_pin_change(previous, new))


def apply_policy(
    policy: Policy,
    pins: dict,
    backend: str,
    link: Link | None,
    *,
    pending_ok: bool = False,
    ruleset: Ruleset | None = None,
    previous: Ruleset | None = None,
    valid_until: dict | None = None,
    around: Around = Around(),  # noqa: B008 - frozen, shared safely
) -> Applied:
    """Make the kernel hold `policy` with `pins`, verify it, then record it.

    `pending_ok`: a policy test failing only for a name with no pin yet is tolerated (the
    daemon). `previous`: a pin change, applied as set updates against that ruleset (pass the
    new `ruleset` from `pin_ruleset`). `valid_until`: each pin's last good answer, kept in the
    state so a later apply can keep a pin whose lookup fails."""
    if ruleset is None:
        ruleset = prepare_ruleset(policy, pins, pending_ok=pending_ok, link=link)
    seconds, created, replaced, reset_at = 0.0, (), False, None
    if previous is None:
        seconds, created, replaced, reset_at = _apply_whole(ruleset, backend, around)
    else:
        netfilter.update_sets(previous, ruleset)
    record(policy, ruleset, backend, pins, list(created), replaced, valid_until, around, reset_at)
    return Applied(policy, ruleset, pins, tuple(created), replaced, seconds)


def _apply_whole(ruleset: Ruleset, backend: str, around: Around) -> tuple:
    around.snapshot()
    started = time.perf_counter()
    try:
        state = netfilter.apply(ruleset, backend)
        if state.sha256() != ruleset.sha256():
            raise SentinelError(NOT_HELD)
    except SentinelError:
        around.timed(time.perf_counter() - started, False)
        raise
    seconds = time.perf_counter() - started
    around.timed(seconds, True)
    return seconds, state.created_tables, state.rules_replaced, state.rules_reset_at


def record(
    policy: Policy,
    ruleset: Ruleset,
    backend: str,
    pins: dict,
    created: list[str],
    full: bool,
    valid_until: dict | None,
    around: Around,
    reset_at: float | None = None,
) -> None:
    """The state for `status`, the report and teardown, then the caller's `applied` step.
    `reset_at`: when the rules (and their counters) were replaced (KernelState.rules_reset_at)."""
    try:
        record_applied(
            policy,
            ruleset,
            backend,
            pins,
            created,
            full=full,
            pins_valid_until=valid_until,
            reset_at=reset_at,
        )
    except SentinelError as exc:
        if around.state_failed is None:
            raise
        around.state_failed(exc)
    around.applied(policy, pins)
