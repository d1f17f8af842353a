"""The command line: parse, call, print. Only here does a SentinelError become an exit code."""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sentinel import fastcmds
from sentinel.enforce import netfilter
from sentinel.errors import EXIT_VIOLATION, BadInput, SentinelError
from sentinel.evidence.commands import guard_status as _guard_status  # noqa: F401 - re-export
from sentinel.evidence.commands import run_report, run_status, status_data  # noqa: F401
from sentinel.policy.commands import check_backend as _backend
from sentinel.policy.commands import policy_path as _policy_path
from sentinel.policy.commands import static_pins as _static_pins
from sentinel.policy.load import load_policy
from sentinel.store.state import APPLIED, read_json, write_json

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
alert_app = typer.Typer(no_args_is_help=True, help="Alert sinks.")
guard_app = typer.Typer(no_args_is_help=True, help="The in-process guard.")
policy_app = typer.Typer(no_args_is_help=True, help="Policies: learn one from audited traffic.")
app.add_typer(alert_app, name="alert")
app.add_typer(guard_app, name="guard")
app.add_typer(policy_app, name="policy")


def _annotation(param: fastcmds.Param) -> Any:
    """The typer annotation of one parameter of fastcmds' table."""
    if param.kind == fastcmds.ARGUMENT:
        return param.type
    if param.kind == fastcmds.LIST:
        annotation = list[param.type] | None
    elif param.kind == fastcmds.VALUE and param.default is None:
        annotation = param.type | None
    else:
        annotation = param.type
    return Annotated[annotation, typer.Option(*param.flags, help=param.help)]


PolicyOpt = _annotation(fastcmds.POLICY)
BackendOpt = _annotation(fastcmds.BACKEND)


def _table_command(name: str) -> None:
    """One of the commands fastcmds.py describes, as a typer command made from its table row
    (the fast start-up parser in entry.py reads the same row)."""
    spec = fastcmds.COMMANDS[name]

    def command(**values: Any) -> None:
        fastcmds.run(name, values, typer.echo)

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(p.name, keyword, annotation=_annotation(p))
        if p.kind == fastcmds.ARGUMENT
        else inspect.Parameter(p.name, keyword, default=p.default, annotation=_annotation(p))
        for p in spec.params
    ]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    app.command(name, help=spec.help)(command)


_table_command("check")
_table_command("apply")
_table_command("status")


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
    import re  # local, like yaml

    for option, value, dots, limit in (
        ("--name", name, ".", 253),
        ("--namespace", namespace, "", 63),
    ):
        if value is not None and (
            len(value) > limit or not re.fullmatch(f"[a-z0-9]([-a-z0-9{dots}]*[a-z0-9])?", value)
        ):
            raise BadInput(
                f"{option}: {value!r} is not an RFC 1123 name (lowercase letters, digits, "
                f"'-'{' and .' if dots else ''}, at most {limit}): Kubernetes would reject it"
            )
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


_table_command("report")


@policy_app.command("suggest")
def policy_suggest(
    last: Annotated[str | None, typer.Option(help="window length ending now, e.g. 1h")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time, epoch, or a duration ago")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time, epoch, or a duration ago")] = None,
    from_bundle: Annotated[
        Path | None, typer.Option(help="read an evidence bundle instead of the store")
    ] = None,
    diff: Annotated[
        Path | None, typer.Option(help="print what would be added to / is unused in this policy")
    ] = None,
) -> None:
    """A policy proposed from the audited and blocked attempts of a window (read-only)."""
    from sentinel.evidence.report import parse_window
    from sentinel.policy import observed
    from sentinel.policy import suggest as learn
    from sentinel.store.state import state_dir

    existing = load_policy(diff) if diff is not None else None
    if from_bundle is not None:
        window = parse_window(last, since, until) if last or since or until else None
        obs = observed.from_bundle(from_bundle, window)
    else:
        obs = observed.from_store(
            parse_window(last or ("1h" if not since else None), since, until), state_dir()
        )
    suggestion = learn.suggest(obs)
    if existing is None:
        typer.echo(suggestion.text(), nl=False)
    else:
        from sentinel.policy.diff import render_diff

        typer.echo(render_diff(suggestion, existing), nl=False)


@app.command()
def explain(
    dest: Annotated[str, typer.Argument(help="HOST:PORT\\[/tcp|udp], e.g. api.openai.com:443")],
    policy_file: PolicyOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="json or text")] = "text",
    pin: Annotated[
        list[str] | None, typer.Option(help="NAME=IP: what if the name were pinned here")
    ] = None,
) -> None:
    """Which layer decides for DEST, the verdict and why (exit 0 allow, 1 deny, 2 bad input)."""
    from sentinel.policy.explain import explain as explain_dest
    from sentinel.policy.explain import parse_dest, render_text
    from sentinel.store.events import db_path

    if fmt not in ("json", "text"):
        raise BadInput(f"--format: {fmt!r} is not one of: json, text")
    target = parse_dest(dest)
    applied = read_json(APPLIED) or {}
    chosen = policy_file or os.environ.get("SENTINEL_POLICY") or applied.get("policy")
    if not chosen:
        raise BadInput("no policy: pass --policy FILE, set SENTINEL_POLICY, or apply one")
    policy = load_policy(chosen)
    if pin:
        static = {k: [str(a) for a in v] for k, v in _static_pins(policy, pin).items()}
        applied = {**applied, "pins": {**applied.get("pins", {}), **static}}
    result = explain_dest(policy, target, applied, db_path(), _guard_status())
    typer.echo(json.dumps(result, indent=2) if fmt == "json" else render_text(result), nl=False)
    if result["verdict"] != "allow":
        raise SentinelError(f"explain: {result['destination']} is not allowed", EXIT_VIOLATION)


@app.command()
def capture(
    count: Annotated[int | None, typer.Option(help="stop after this many packets")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="live packets until stopped (default: recent ones)")
    ] = False,
    pcap: Annotated[
        Path | None, typer.Option(help="also write a pcap here (link type 239, NFLOG)")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="text or json")] = "text",
) -> None:
    """Logged packets from the running monitor's feed, dissected by scapy (root only)."""
    from sentinel.evidence.capture import run_capture  # local: scapy only for this command
    from sentinel.store.state import state_dir

    err = lambda line: typer.echo(line, err=True)  # noqa: E731
    run_capture(state_dir(), count, follow, pcap, fmt, sys.stdout, err)


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
    compile_: Annotated[
        bool, typer.Option("--compile", help="byte-compile the guard first (see docs/guard.md)")
    ] = False,
    python: Annotated[
        str | None, typer.Option(help="with --compile: the app's interpreter (default: this one)")
    ] = None,
) -> None:
    """Print the directory to put on the app's PYTHONPATH (it holds sitecustomize.py)."""
    from sentinel.guard import guard_path, pth_files

    if compile_:
        from sentinel.guard.bytecode import compile_guard

        for pyc in compile_guard(python=python):
            typer.echo(f"compiled {pyc}", err=True)
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
