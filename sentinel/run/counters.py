"""The daemon's kernel-counter bookkeeping: a reading before every full apply (which zeroes
the counters), and the `sentinel_unaccounted_packets` gauge after every tamper round."""

from __future__ import annotations

from collections.abc import Callable

from sentinel.enforce import netfilter
from sentinel.evidence import metrics
from sentinel.log import get_logger
from sentinel.store.events import Event

log = get_logger("daemon")


def snapshot_counters(backend: str, emit: Callable[[Event], None]) -> None:
    """A full apply zeroes the kernel counters: read them first so no netflow, and no attempt
    made while no sentinel was running, is lost (a `kernel_counters` event)."""
    from sentinel.enforce.snapshot import kernel_snapshot

    try:
        if not netfilter.read_state(backend).present:
            return  # nothing of ours in the kernel: nothing to lose
        detail = kernel_snapshot(backend)
    except Exception:  # noqa: BLE001 - bookkeeping must never stop an apply
        log.exception("counter_snapshot_failed")
        return
    emit(Event(layer="sentinel", kind="kernel_counters", verdict="info", detail=detail))


def coverage_check(backend: str) -> None:
    """`sentinel_unaccounted_packets`: kernel NFLOG packets the store does not hold."""
    from sentinel.evidence.coverage import unaccounted_packets

    try:
        metrics.set_unaccounted(unaccounted_packets(backend))
    except Exception:  # noqa: BLE001 - bookkeeping must never stop the loop
        log.exception("coverage_check_failed")
