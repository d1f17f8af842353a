"""Every event kind the sentinel emits, in one table: layer(s), severity, meaning.

The router takes severities from here, the report and the metrics take "is this an egress
attempt" from here, the daemon's log takes "is this periodic bookkeeping" from here, and
docs/alerts.md's kinds table is generated from here (`python -m sentinel.store.kinds`; a test
fails when the two differ). A producer that emits a kind missing here fails its test.
"""

from __future__ import annotations

import sys
from collections import namedtuple

P1, P2, P3 = "P1", "P2", "P3"


# name: str; layers: tuple[str, ...]; severity: str | None (None: never alerts, recorded
# only); meaning: str; attempt: an egress attempt, counted by the report and the metrics;
# quiet: periodic bookkeeping, stored, not logged line by line. A named tuple, not a
# dataclass: the report imports this, and no dataclasses.
Kind = namedtuple("Kind", "name layers severity meaning attempt quiet", defaults=(False, False))


KINDS: tuple[Kind, ...] = (
    Kind(
        "egress_attempt",
        ("netfilter", "dns", "guard"),
        P1,
        "the app tried to reach a destination the policy does not allow",
        attempt=True,
    ),
    Kind("dns_refused", ("dns",), P1, "older name of a DNS-layer egress attempt", attempt=True),
    Kind("connect_blocked", ("guard",), P1, "older name of a guard egress attempt", attempt=True),
    Kind("connect_audited", ("guard",), P1, "older name of an audited guard attempt", attempt=True),
    Kind("canary_escaped", ("canary",), P1, "a bypass canary probe got an answer from outside"),
    Kind("tamper", ("tamper",), P1, "the kernel rules differed from the applied ruleset"),
    Kind(
        "tamper_unrepaired",
        ("tamper",),
        P1,
        "rules differ and re-applying them failed: enforcement may be off",
    ),
    Kind("guard_fail_closed", ("guard",), P1, "the in-process guard could not read its policy"),
    Kind(
        "monitor_lost",
        ("sentinel",),
        P1,
        "a sensor (NFLOG reader, resolver, guard receiver, store, alerts) stopped; "
        "`detail.resolved` when it is back",
    ),
    Kind("dns_upstream_failing", ("dns",), P2, "the DNS upstream does not answer for a pin"),
    Kind("dns_upstream_recovered", ("dns",), None, "the DNS upstream answers again"),
    Kind(
        "dns_type_failing",
        ("dns",),
        None,
        "one record type (A or AAAA) fails upstream; the other's pins stand",
    ),
    Kind("dns_type_recovered", ("dns",), None, "a failing record type answers again"),
    Kind(
        "dns_dropped",
        ("dns",),
        P2,
        "queries the resolver never saw (full UDP buffer, TCP cap): coverage is partial",
    ),
    Kind("stale_pins", ("dns",), P2, "a pin is served past its TTL (upstream failing)"),
    Kind("pins_expired", ("dns",), P2, "a stale pin passed its grace: name fails closed"),
    Kind("dns_rebinding", ("dns",), P2, "an upstream answer held private/forbidden addresses"),
    Kind("reload_rejected", ("sentinel",), P2, "a changed policy was invalid; the old one stays"),
    Kind("sink_degraded", ("sentinel",), P2, "an alert sink's circuit breaker opened"),
    Kind("canary_failed", ("canary",), P2, "a canary round raised an error (counted, retried)"),
    Kind("queue_saturation", ("sentinel",), P3, "the alert submit queue is above 80%"),
    Kind("pin_changed", ("dns",), None, "a pinned name's addresses changed"),
    Kind("policy_reloaded", ("sentinel",), None, "a new policy is in force"),
    Kind(
        "canary_result", ("canary",), None, "a canary probe was refused, as it must be", quiet=True
    ),
    Kind("canary_probe", ("canary",), None, "NFLOG saw a canary probe (accounted, not an attempt)"),
    Kind("monitor_heartbeat", ("sentinel",), None, "the NFLOG monitor is watching", quiet=True),
    Kind("kernel_counters", ("sentinel",), None, "a reading of the kernel counters", quiet=True),
    Kind("guard_heartbeat", ("guard",), None, "a guarded process is alive", quiet=True),
)

BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
SEVERITY_BY_KIND: dict[str, str] = {k.name: k.severity for k in KINDS if k.severity}
ATTEMPT_KINDS: frozenset[str] = frozenset(k.name for k in KINDS if k.attempt)
QUIET_KINDS: frozenset[str] = frozenset(k.name for k in KINDS if k.quiet)
ATTEMPT_LAYERS = ("netfilter", "dns", "guard")


def known(kind: str) -> bool:
    return kind in BY_NAME


def severity_of(kind: str) -> str | None:
    kind_ = BY_NAME.get(kind)
    return kind_.severity if kind_ else None


def is_attempt(layer: str, kind: str, verdict: str) -> bool:
    """The report's definition of one egress attempt (the metrics count the same)."""
    return (
        layer in ATTEMPT_LAYERS
        and verdict in ("blocked", "audited")
        and (kind in ATTEMPT_KINDS or layer == "netfilter")
    )


def markdown_table() -> str:
    """The kinds table in docs/alerts.md (between the `kinds:begin`/`kinds:end` markers)."""
    lines = ["| kind | layer | severity | meaning |", "|---|---|---|---|"]
    for k in KINDS:
        severity = k.severity or "never alerts"
        lines.append(f"| `{k.name}` | {', '.join(k.layers)} | {severity} | {k.meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
