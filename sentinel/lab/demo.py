"""`sentinel lab`: the whole product on a bare host, safely, in well under a minute.

It builds the compose topology out of throwaway network namespaces (`netns.Topology`: the app,
stand-in postgres/neo4j/ollama, a DNS upstream, an "outside" host that owns the addresses
api.openai.com and the telemetry host resolve to), starts an alert receiver on the app's
loopback (Slack/PagerDuty/webhook stand-in), starts sentinel in the app namespace exactly as the
sidecar would run, runs a workload with the guard (allowed upstream calls + scripted
violations) or `--app CMD`, then writes results.json (the PRD's format; its `sentinel` section
comes from `sentinel report`) and an evidence directory. The outside host's own packet counter
is reported next to sentinel's numbers as ground truth.

Safety: nothing touches the root namespace; every address is in 198.18.0.0/15 or 2001:db8::/32;
every process is ours and stopped by pid; the namespaces are deleted in `finally`, also on
Ctrl-C/SIGTERM and on failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from sentinel.lab.capture import LabCapture
from sentinel.lab.results import (
    build_results,
    lab_ok,
    percentile,
    summary,
    violations_section,
    write_results,
)
from sentinel.lab.scenario import ENFORCER, LAB_POLICY, VIOLATIONS, Violation
from sentinel.lab.session import Lab, LabFailed, LabInterrupted
from sentinel.policy.load import load_policy

__all__ = [  # the lab's entry points and, for tests, the scenario and verdict they check
    "LAB_POLICY",
    "VIOLATIONS",
    "Violation",
    "lab_ok",
    "percentile",
    "preflight",
    "run_lab",
    "violations_section",
]


# --- entry point ------------------------------------------------------------------------------
def preflight() -> str | None:
    if os.geteuid() != 0:
        return "sentinel lab needs root (it creates network namespaces)"
    for tool in ("ip", "iptables-nft-restore", "ip6tables-nft-restore", "ipset", "ss", "curl"):
        if not shutil.which(tool):
            return f"sentinel lab needs {tool} (apt-get install iproute2 iptables ipset curl)"
    return None


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP raise LabInterrupted so `finally` blocks tear down."""

    def handler(signum: int, _frame: Any) -> None:
        raise LabInterrupted(signal.Signals(signum).name)

    with _signals(handler):
        yield


def run_lab(
    app_cmd: str | None = None,
    out: Path = Path("lab-results"),
    policy_file: Path | None = None,
    console: Console | None = None,
) -> int:
    """Returns 0 when nothing left and every scripted violation was blocked, 1 otherwise,
    2 when the lab cannot run here."""
    console = console or Console(stderr=False, highlight=False)
    problem = preflight()
    if problem:
        console.print(f"[red]{problem}[/]")
        return 2
    out = Path(out).resolve()
    if policy_file:
        load_policy(policy_file)  # a broken file is bad input (exit 2), before anything is built
    text = policy_file.read_text() if policy_file else LAB_POLICY
    lab = Lab(out=out, console=console, app_cmd=app_cmd, policy_text=text)
    try:
        with interruptible():
            try:
                return _run_steps(lab)
            finally:
                with _signals_ignored(), lab.step("tearing down namespaces and processes"):
                    lab.close()
    except LabInterrupted as exc:
        console.print(f"[yellow]interrupted ({exc}); everything was torn down[/]")
        return 130
    except LabFailed as exc:
        console.print(f"[red]lab failed: {exc}[/] (everything was torn down)")
        return 1


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not abort the teardown half-way."""
    with _signals(signal.SIG_IGN):
        yield


@contextmanager
def _signals(handler: Any) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP go to `handler` inside the block; the old handlers after."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_steps(lab: Lab) -> int:
    with lab.step("preparing the output directory"):
        lab.prepare_dirs()
    with lab.step("building namespaces: app, postgres, neo4j, ollama, dns, outside"):
        lab.build()
    lab.console.print(f"  [dim]namespaces: {lab.facts['namespaces_prefix']}-*[/]")
    with lab.step("control: the outside host is reachable before sentinel"):
        lab.control()
    with lab.step("starting the local alert receiver (Slack/PagerDuty stand-in)"):
        lab.start_receiver()
    with lab.step(f"starting sentinel {' '.join(ENFORCER)} in the app namespace"):
        lab.start_sentinel()
    capture = LabCapture(lab)
    with lab.step("starting sentinel capture (live packet view from the monitor, pcap)"):
        capture.start()
    title = f"running --app {lab.app_cmd!r}" if lab.app_cmd else "running the guarded workload"
    with lab.step(title):
        outcomes = lab.run_workload()
    with lab.step("collecting evidence"):
        rep = lab.settle(bool(lab.facts.get("guard_path")))
        lab.facts["capture"] = capture.stop()
        lab.snapshot_kernel()
        results = write_results(lab, build_results(lab, outcomes, rep))
    summary(lab.console, results, lab.out)
    return 0 if lab_ok(results) else 1


if __name__ == "__main__":  # pragma: no cover - `sentinel lab` is the entry point
    sys.exit(run_lab(app_cmd=sys.argv[1] if len(sys.argv) > 1 else None))
