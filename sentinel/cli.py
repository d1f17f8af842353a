"""The command line: parse, call, print. Only here does a SentinelError become an exit code."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from sentinel.enforce import netfilter
from sentinel.errors import EXIT_VIOLATION, BadInput, SentinelError
from sentinel.policy.decide import placeholder_pins, prepare_ruleset, run_policy_tests
from sentinel.policy.load import Policy, load_policy
from sentinel.resolver.system import system_pins
from sentinel.store.state import APPLIED, read_json, record_applied, write_json

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
alert_app = typer.Typer(no_args_is_help=True, help="Alert sinks.")
guard_app = typer.Typer(no_args_is_help=True, help="The in-process guard.")
app.add_typer(alert_app, name="alert")
app.add_typer(guard_app, name="guard")

PolicyOpt = Annotated[
    Path | None, typer.Option("--policy", "-p", help="Policy file (default: $SENTINEL_POLICY)")
]
BackendOpt = Annotated[str, typer.Option(help="netfilter backend: nft or legacy")]
FormatOpt = Annotated[str, typer.Option("--format", help="json or table")]


def _policy_path(path: Path | None) -> Path:
    chosen = path or (
        Path(os.environ["SENTINEL_POLICY"]) if os.environ.get("SENTINEL_POLICY") else None
    )
    if chosen is None:
        raise BadInput("no policy: pass --policy FILE or set SENTINEL_POLICY")
    return chosen


def _backend(name: str) -> str:
    if name not in netfilter.BACKENDS:
        raise BadInput(f"--backend: {name!r} is not one of: {', '.join(netfilter.BACKENDS)}")
    return name


def _static_pins(policy: Policy, specs: list[str]) -> dict[str, list]:
    pins: dict[str, list] = {}
    for spec in specs:
        name, _, ip = spec.partition("=")
        if name not in policy.hostnames:
            raise BadInput(f"--pin {spec}: {name!r} is not an allowlisted host name")
        try:
            pins.setdefault(name, []).append(ipaddress.ip_address(ip))
        except ValueError:
            raise BadInput(f"--pin {spec}: {ip!r} is not an IP address") from None
    return pins


def _format(name: str) -> str:
    if name not in ("json", "table"):
        raise BadInput(f"--format: {name!r} is not one of: json, table")
    return name


def _echo_tests(policy: Policy, pins: dict) -> bool:
    results = run_policy_tests(policy, pins)
    for r in results:
        mark = "ok  " if r.passed else "FAIL"
        where = ", ".join(r.addresses) or "no address"
        typer.echo(
            f"{mark} {policy.source}:{r.test.line}: {r.test.protocol} {r.test.to} "
            f"expect {r.test.expect}, got {r.got} ({where})"
        )
    return all(r.passed for r in results)


@app.command()
def check(file: Path) -> None:
    """Validate a policy and run its own tests (exit 2 on bad input, 1 on failed tests)."""
    policy = load_policy(file)
    passed = _echo_tests(policy, placeholder_pins(policy))
    if not passed:
        raise SentinelError(f"{file}: policy tests failed", EXIT_VIOLATION)
    typer.echo(
        f"{file}: valid, mode={policy.mode}, {len(policy.allow)} allow entries, "
        f"{len(policy.tests)} tests passed"
    )


@app.command()
def apply(
    policy_file: PolicyOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the ruleset, change nothing")
    ] = False,
    backend: BackendOpt = netfilter.DEFAULT_BACKEND,
    pin: Annotated[list[str] | None, typer.Option(help="NAME=IP: a static pin, skips DNS")] = None,
) -> None:
    """Apply the policy once (atomic per table and family)."""
    policy = load_policy(_policy_path(policy_file))
    backend = _backend(backend)
    static = _static_pins(policy, pin or [])
    pins, missing = system_pins(policy, skip=set(static))
    pins.update(static)
    for name in missing:
        typer.echo(f"warning: {name!r} did not resolve; it stays denied until it does", err=True)
    ruleset = prepare_ruleset(policy, pins)
    if dry_run:
        typer.echo(ruleset.text(), nl=False)
        return
    state = netfilter.apply(ruleset, backend)
    if state.sha256() != ruleset.sha256():
        raise SentinelError("applied, but the kernel does not hold the expected ruleset")
    record_applied(policy, ruleset, backend, pins, state.created_tables, full=state.rules_replaced)
    from sentinel.guard.compile import write_allowlist  # the in-process guard reads the same pins
    from sentinel.store.state import state_dir

    write_allowlist(policy, pins, state_dir())
    typer.echo(f"applied {ruleset.sha256()[:12]} mode={policy.mode} backend={backend}")


def status_data() -> dict:
    applied = read_json(APPLIED)
    if applied and "ruleset_sha256" not in applied:  # torn down since
        applied = None
    backend = (applied or {}).get("backend", netfilter.DEFAULT_BACKEND)
    kernel = netfilter.read_state(backend)
    expected = (applied or {}).get("ruleset_sha256")
    return {
        "applied": applied is not None,
        "mode": (applied or {}).get("mode"),
        "backend": backend,
        "policy": (applied or {}).get("policy"),
        "policy_sha256": (applied or {}).get("policy_sha256"),
        "ruleset_sha256_expected": expected,
        "ruleset_sha256_kernel": kernel.sha256() if kernel.present else None,
        "in_sync": bool(expected) and kernel.present and kernel.sha256() == expected,
        "pins": (applied or {}).get("pins", {}),
        "guard": _guard_status(),
    }


def _guard_status() -> dict:
    """guard_active per guarded process, from what the guard receiver last wrote."""
    from sentinel.guard.receiver import guard_processes
    from sentinel.store.state import state_dir

    procs = guard_processes(state_dir()).get("processes", {})
    return {
        "processes": len(procs),
        "active": sum(bool(p.get("guard_active")) for p in procs.values()),
        "per_process": {
            pid: {k: p.get(k) for k in ("exe", "mode", "guard_active", "fail_closed")}
            for pid, p in procs.items()
        },
    }


@app.command()
def status(fmt: FormatOpt = "table") -> None:
    """Mode, policy hash, expected vs kernel ruleset hash (exit 1 when they differ)."""
    fmt = _format(fmt)  # arguments first: bad input never reaches the kernel
    data = status_data()
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            typer.echo(f"{key:26} {value}")
    if not data["in_sync"]:
        raise SentinelError(
            "kernel rules do not match the applied ruleset"
            if data["applied"]
            else "nothing applied (no state in the state directory)"
        )


@app.command()
def teardown(backend: Annotated[str | None, typer.Option(help="only this backend")] = None) -> None:
    """Remove only sentinel's own chains, jumps and sets."""
    created = (read_json(APPLIED) or {}).get("created_tables", [])
    found = netfilter.teardown(_backend(backend) if backend else None, created)
    if read_json(APPLIED):
        write_json(APPLIED, {"torn_down_at": time.time(), "created_tables": []})
    typer.echo("removed sentinel rules" if found else "no sentinel rules were present")


@app.command("export")
def export_cmd(
    target: Annotated[str, typer.Argument(help="k8s (NetworkPolicy) or cilium (toFQDNs)")],
    policy_file: PolicyOpt = None,
    name: Annotated[str, typer.Option(help="metadata.name")] = "sentinel-egress",
    namespace: Annotated[str | None, typer.Option(help="metadata.namespace")] = None,
    app_label: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE selecting the app's pods (app=mem0)")
    ] = None,
    label_key: Annotated[str, typer.Option(help="label that selects a service's pods")] = "app",
    fmt: Annotated[str, typer.Option("--format", help="yaml or json")] = "yaml",
) -> None:
    """Print the policy as a Kubernetes NetworkPolicy or a CiliumNetworkPolicy."""
    import yaml  # local: only this command needs it

    from sentinel.policy.export import RENDERERS, ExportOptions, warnings

    if target not in RENDERERS:
        raise BadInput(f"export: {target!r} is not one of: {', '.join(RENDERERS)}")
    if fmt not in ("yaml", "json"):
        raise BadInput(f"--format: {fmt!r} is not one of: yaml, json")
    labels = {}
    for spec in app_label or ["app=mem0"]:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise BadInput(f"--app-label {spec}: expected KEY=VALUE")
        labels[key] = value
    policy = load_policy(_policy_path(policy_file))
    opts = ExportOptions(name=name, namespace=namespace, app_labels=labels, label_key=label_key)
    doc = RENDERERS[target](policy, opts)
    for line in warnings(policy, target):
        typer.echo(f"warning: {line}", err=True)
    if fmt == "json":
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


@app.command()
def lab(
    app_cmd: Annotated[
        str | None, typer.Option("--app", help="run this command in the guarded app namespace")
    ] = None,
    out: Annotated[Path, typer.Option(help="where results.json and evidence go")] = Path(
        "lab-results"
    ),
    policy_file: Annotated[
        Path | None, typer.Option("--policy", "-p", help="lab policy (default: built in)")
    ] = None,
) -> None:
    """Bare-host demo (root, no Docker): the compose topology out of network namespaces."""
    from sentinel.lab.demo import run_lab  # local: heavy, and only this command needs it

    code = run_lab(app_cmd=app_cmd, out=out, policy_file=policy_file)
    if code:
        raise SentinelError("lab: see the summary above", code)


@app.command()
def run(
    policy_file: PolicyOpt = None,
    teardown_on_exit: Annotated[
        bool, typer.Option("--teardown-on-exit", help="remove the rules on exit (default: keep)")
    ] = False,
    backend: BackendOpt = netfilter.DEFAULT_BACKEND,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    ready_file: Annotated[
        Path | None,
        typer.Option(help="write this namespace's id here once everything is up (start gate)"),
    ] = None,
) -> None:
    """Apply, pin DNS, hot-reload, tamper-check; runs until SIGTERM (the deny stays)."""
    from sentinel.log import configure
    from sentinel.run.daemon import (
        Daemon,  # local: threads, watchdog and the resolver only for `run`
    )
    from sentinel.store.state import state_dir

    configure(log_level, log_file=state_dir() / "sentinel.log")
    from sentinel.run.services import SERVICES

    code = Daemon(
        _policy_path(policy_file), _backend(backend), teardown_on_exit, SERVICES, ready_file
    ).run()
    if code:  # 3: the app's namespace is gone (run/orphan.py); the orchestrator restarts us
        raise typer.Exit(code)


@app.command()
def report(
    last: Annotated[str | None, typer.Option(help="window length ending now, e.g. 10m")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, epoch, or a duration ago")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time, epoch, or a duration ago")] = None,
    fmt: FormatOpt = "json",
    results: Annotated[
        Path | None, typer.Option(help="merge the `sentinel` section into this results.json")
    ] = None,
    bundle: Annotated[Path | None, typer.Option(help="write an evidence bundle here")] = None,
) -> None:
    """Evidence for a window (default last 10m); exit 1 on external calls or ruleset drift."""
    from sentinel.evidence import report as rep  # local: only this command needs it
    from sentinel.store.state import state_dir

    fmt = _format(fmt)
    window = rep.parse_window(last, since, until)
    data = rep.build_report(window)
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        from rich.console import Console

        console = Console(width=max(100, Console().width))
        for table in rep.render_table(data):
            console.print(table)
    if results is not None:
        rep.merge_results(results, data)
    if bundle is not None:
        from sentinel.evidence.bundle import write_bundle

        write_bundle(bundle, data, state_dir())
    reason = rep.violation(data)
    if reason:
        raise SentinelError(f"report: {reason}", EXIT_VIOLATION)


@alert_app.command("test")
def alert_test(policy_file: PolicyOpt = None) -> None:
    """Send one test alert through every configured sink and print each result."""
    from sentinel.alerts import send_test_alerts

    policy = load_policy(_policy_path(policy_file))
    results = send_test_alerts(policy)
    if not results:
        raise SentinelError("alert test: no alert sinks configured in the policy")
    for r in results:  # details are redacted: never a URL or a key
        typer.echo(f"{'ok  ' if r.ok else 'FAIL'} {r.sink:10} {r.detail}")
    failed = [r.sink for r in results if not r.ok]
    if failed:
        raise SentinelError(f"alert test: {len(failed)} sink(s) failed: {', '.join(failed)}")


@guard_app.command("path")
def guard_path_cmd(
    pth: Annotated[
        bool, typer.Option("--pth", help="print the site-packages loader files instead")
    ] = False,
) -> None:
    """Print the directory to put on the app's PYTHONPATH (it holds sitecustomize.py)."""
    from sentinel.guard import guard_path, pth_files

    if pth:
        for path in pth_files():
            typer.echo(str(path))
    else:
        typer.echo(str(guard_path()))


def main() -> None:
    try:
        app()  # standalone: click prints usage errors and exits 2
    except SentinelError as exc:
        typer.echo(f"sentinel: {exc.message}", err=True)
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
