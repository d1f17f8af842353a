"""The bodies of `sentinel check` and `sentinel apply`, free of typer/click/rich.

`sentinel.cli` (typer) and `sentinel.entry` (the start-up fast path) both call these, so both
print the same text and exit with the same codes. `echo(text, nl=True, err=False)` prints.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

from sentinel.enforce import netfilter
from sentinel.errors import EXIT_VIOLATION, BadInput, SentinelError
from sentinel.policy import safety
from sentinel.policy.decide import placeholder_pins, prepare_ruleset, run_policy_tests
from sentinel.policy.load import Policy, load_policy

Echo = Callable[..., object]


def policy_path(path: Path | None) -> Path:
    chosen = path or (
        Path(os.environ["SENTINEL_POLICY"]) if os.environ.get("SENTINEL_POLICY") else None
    )
    if chosen is None:
        raise BadInput("no policy: pass --policy FILE or set SENTINEL_POLICY")
    return chosen


def check_backend(name: str) -> str:
    if name not in netfilter.BACKENDS:
        raise BadInput(f"--backend: {name!r} is not one of: {', '.join(netfilter.BACKENDS)}")
    return name


def static_pins(policy: Policy, specs: list[str]) -> dict[str, list]:
    pins: dict[str, list] = {}
    for spec in specs:
        name, _, ip = spec.partition("=")
        if name not in policy.hostnames:
            raise BadInput(f"--pin {spec}: {name!r} is not an allowlisted host name")
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise BadInput(f"--pin {spec}: {ip!r} is not an IP address") from None
        if why := safety.host_problem(str(address)):  # what no policy host may be either
            raise BadInput(f"--pin {spec}: {why}")
        pins.setdefault(name, []).append(address)
    return pins


def echo_tests(policy: Policy, pins: dict, echo: Echo) -> bool:
    results = run_policy_tests(policy, pins)
    for r in results:
        mark = "ok  " if r.passed else "FAIL"
        where = ", ".join(r.addresses) or "no address"
        echo(
            f"{mark} {policy.source}:{r.test.line}: {r.test.protocol} {r.test.to} "
            f"expect {r.test.expect}, got {r.got} ({where})"
        )
    return all(r.passed for r in results)


def run_check(file: Path, echo: Echo) -> None:
    policy = load_policy(file)
    for note in policy.warnings:  # unsafe-but-allowed values (sentinel/policy/safety.py)
        echo(f"warning: {note}", err=True)
    passed = echo_tests(policy, placeholder_pins(policy), echo)
    if not passed:
        raise SentinelError(f"{file}: policy tests failed", EXIT_VIOLATION)
    echo(
        f"{file}: valid, mode={policy.mode}, {len(policy.allow)} allow entries, "
        f"{len(policy.tests)} tests passed"
    )


def run_apply(
    policy_file: Path | None, dry_run: bool, backend: str, pin: list[str], echo: Echo
) -> None:
    from sentinel.enforce.netdev import read_link
    from sentinel.resolver.oneshot import resolve_pins  # the same marked upstream as `run`
    from sentinel.store.state import APPLIED, read_json

    policy = load_policy(policy_path(policy_file))
    backend = check_backend(backend)
    static = static_pins(policy, pin)
    applied = read_json(APPLIED)
    resolved = resolve_pins(policy, set(static), applied if applied and "pins" in applied else None)
    pins = {**resolved.pins, **static}
    for line in resolved.warnings:
        echo(f"warning: {line}", err=True)
    if dry_run:
        echo(prepare_ruleset(policy, pins, link=read_link()).text(), nl=False)
        return
    from sentinel.run.applying import apply_policy  # the same sequence as `sentinel run`

    done = apply_policy(policy, pins, backend, read_link(), valid_until=resolved.valid_until)
    echo(f"applied {done.ruleset.sha256()[:12]} mode={policy.mode} backend={backend}")
