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

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sentinel.lab.capture import LabCapture
from sentinel.lab.netns import HELPERS, PYTHON, Topology
from sentinel.policy.load import load_policy

ENFORCER = ("run",)  # the sidecar's command; ("apply",) drives the rules without the daemon
OUTSIDE4, OUTSIDE6 = "198.18.5.5", "2001:db8::5"
OPENAI, TELEMETRY = "api.openai.com", "us.i.posthog.com"
ALERT_PORT = 9099
MARKER = ".sentinel-lab"
READY_TIMEOUT = 30.0  # sentinel in force; generous for slow CI machines
SETTLE_TIMEOUT = 10.0  # events reach the store / alerts reach the receiver
APP_TIMEOUT = 120.0
LAB_SECRETS = {  # fake values for the local receiver; real ones only ever come from the env
    "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{ALERT_PORT}/slack",
    "PAGERDUTY_URL": f"http://127.0.0.1:{ALERT_PORT}/pagerduty",
    "PAGERDUTY_ROUTING_KEY": "lab-routing-key",
    "SENTINEL_WEBHOOK_URL": f"http://127.0.0.1:{ALERT_PORT}/webhook",
    "SENTINEL_WEBHOOK_SECRET": "lab-webhook-secret",
}

LAB_POLICY = """\
# sentinel lab: the mem0 policy, with alert sinks pointed at the lab's local receiver.
version: 1
mode: enforce
allow:
  - {name: postgres, host: postgres, ports: [5432], protocol: tcp}
  - {name: neo4j,    host: neo4j,    ports: [7474, 7687], protocol: tcp}
  - {name: ollama,   host: ollama,   ports: [11434], protocol: tcp}
dns:
  upstream: auto          # the app namespace's resolv.conf: the lab's DNS host
  min_ttl: 30s
  refuse_with: refused
alerts:
  slack:     {webhook_url_env: SLACK_WEBHOOK_URL, channel: "#wingman-alerts"}
  pagerduty: {routing_key_env: PAGERDUTY_ROUTING_KEY, url_env: PAGERDUTY_URL}
  webhook:   {url_env: SENTINEL_WEBHOOK_URL, hmac_secret_env: SENTINEL_WEBHOOK_SECRET}
  dedup_window: 1m
monitor:
  tamper_interval: 2s
tests:
  - {to: "postgres:5432", expect: allow}
  - {to: "ollama:11434", expect: allow}
  - {to: "198.18.5.5:443", expect: deny}
  - {to: "[2001:db8::5]:443", expect: deny}
"""


@dataclass(frozen=True)
class Violation:
    action: str  # the workload's action name
    what: str
    protocol: str
    port: int
    name: str | None = None  # by-name calls: blocked before any address exists
    ip: str | None = None
    guard_sees: bool = True  # a subprocess is invisible to the in-process guard

    @property
    def network_layer(self) -> str:
        return "dns" if self.name else "netfilter"

    def expected_layer(self, guard_on: bool) -> str:
        return "guard" if guard_on and self.guard_sees else self.network_layer

    def matches(self, attempt: dict[str, Any]) -> bool:
        name = (attempt.get("dst_name") or "").rstrip(".").lower()
        if self.name and name == self.name:
            return True
        return (
            self.ip is not None
            and attempt.get("dst_ip") == self.ip
            and attempt.get("dst_port") == self.port
            and (attempt.get("protocol") or self.protocol) == self.protocol
        )


VIOLATIONS = (
    Violation("openai_https_by_name", "OpenAI-style HTTPS call by name", "tcp", 443, name=OPENAI),
    Violation("telemetry_by_name", "telemetry call by name", "tcp", 443, name=TELEMETRY),
    Violation("ip_literal", "TCP to an IP literal", "tcp", 443, ip=OUTSIDE4),
    Violation("ipv6", "TCP over IPv6", "tcp", 443, ip=OUTSIDE6),
    Violation("udp", "UDP datagram", "udp", 443, ip=OUTSIDE4),
    Violation("curl_subprocess", "curl subprocess", "tcp", 80, ip=OUTSIDE4, guard_sees=False),
)


class LabFailed(Exception):
    """A lab step could not be completed (printed; exit 1 after teardown)."""


class LabInterrupted(Exception):
    """Ctrl-C or SIGTERM: unwind through every `finally` so the namespaces go away."""


@dataclass
class Lab:
    out: Path
    console: Console
    app_cmd: str | None = None
    policy_text: str = LAB_POLICY
    topo: Topology | None = None
    enforcer: subprocess.Popen | None = None
    files: list[Any] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    # --- paths --------------------------------------------------------------------------
    @property
    def evidence(self) -> Path:
        return self.out / "evidence"

    @property
    def state(self) -> Path:
        return self.out / "state"

    @property
    def policy_path(self) -> Path:
        return self.evidence / "policy.yaml"

    def env(self) -> dict[str, str]:
        return {"SENTINEL_STATE_DIR": str(self.state), "SENTINEL_POLICY": str(self.policy_path)}

    def sentinel(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        assert self.topo is not None
        exe = str(Path(PYTHON).with_name("sentinel"))
        return self.topo.run("app", exe, *args, env=self.env(), check=False, timeout=timeout)

    # --- steps --------------------------------------------------------------------------
    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        begin = time.monotonic()
        with self.console.status(f"[bold]{title}…"):
            yield
        self.console.print(f"[green]✓[/] {title} [dim]({time.monotonic() - begin:.1f} s)[/]")

    def prepare_dirs(self) -> None:
        """Fresh evidence/ and state/ under --out; a directory that holds anything else is
        refused rather than emptied (the marker says a lab made it)."""
        self.out.mkdir(parents=True, exist_ok=True)
        marker = self.out / MARKER
        if not marker.exists() and any(self.out.iterdir()):
            raise LabFailed(f"{self.out} is not empty and not a lab output directory: pick --out")
        marker.write_text("written by `sentinel lab`; its evidence/ and state/ are replaced\n")
        for sub in (self.evidence, self.state):
            shutil.rmtree(sub, ignore_errors=True)
            sub.mkdir(parents=True)
        (self.out / "results.json").unlink(missing_ok=True)
        self.policy_path.write_text(self.policy_text)

    def build(self) -> None:
        self.topo = Topology()
        self.topo.build()
        records = {
            host: {"A": [self.topo.v4(host)], "AAAA": [self.topo.v6(host)]}
            for host in ("postgres", "neo4j", "ollama")
        }
        for name in (OPENAI, TELEMETRY):  # "the internet": all of it is the outside host
            records[name] = {"A": [OUTSIDE4], "AAAA": [OUTSIDE6]}
        self.topo.start_dns_server(records, self.state, ttl=60)
        self.facts["namespaces_prefix"] = self.topo.prefix

    def control(self) -> None:
        """Before sentinel: the outside host IS reachable (else zero packets would prove
        nothing); then its counters are zeroed so the ground truth starts at 0."""
        assert self.topo is not None
        # UDP: one datagram and its answer, no closing handshake to straggle in after zeroing
        probe = self.topo.probe("udp", OUTSIDE4, 443)
        self.facts["control_reached_outside_before_sentinel"] = bool(probe["ok"])
        self._quiet_outside()
        for tool in ("iptables-nft", "ip6tables-nft"):
            self.topo.run("outside", tool, "-Z", "INPUT")
        self.facts["outside_packets_at_start"] = self.topo.outside_packets()

    def _quiet_outside(self, timeout: float = 3.0) -> None:
        """Wait until the outside host's counter stops moving (bounded)."""
        assert self.topo is not None
        deadline, last = time.monotonic() + timeout, -1
        while time.monotonic() < deadline:
            now = self.topo.outside_packets()
            if now == last:
                return
            last = now
            time.sleep(0.3)

    def start_receiver(self) -> None:
        assert self.topo is not None
        sink = self.topo.spawn(
            "app",
            PYTHON,
            str(HELPERS / "alertsink.py"),
            str(ALERT_PORT),
            str(self.evidence / "alerts-received.jsonl"),
            "--seconds",
            "900",
        )
        line = sink.stdout.readline() if sink.stdout else ""
        if line.strip() != "ready":
            raise LabFailed(f"alert receiver did not start: {line!r}")

    def start_sentinel(self) -> None:
        assert self.topo is not None
        exe = str(Path(PYTHON).with_name("sentinel"))
        log = open(self.evidence / "sentinel.log", "w")  # noqa: SIM115 - closed in close()
        self.files.append(log)
        env = {**self.env(), **LAB_SECRETS}
        if ENFORCER == ("run",):
            self.enforcer = self.topo.spawn(
                "app",
                exe,
                *ENFORCER,
                "--policy",
                str(self.policy_path),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        else:
            done = self.topo.run(
                "app", exe, *ENFORCER, "--policy", str(self.policy_path), env=env, check=False
            )
            log.write(done.stdout + done.stderr)
            if done.returncode != 0:
                raise LabFailed(f"sentinel {ENFORCER[0]} failed: {done.stderr.strip()}")
        self.wait_in_force()

    def wait_in_force(self) -> None:
        """In force = `sentinel status` says kernel == applied, and the resolver listens."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.enforcer is not None and self.enforcer.poll() is not None:
                tail = (self.evidence / "sentinel.log").read_text()[-2000:]
                raise LabFailed(f"sentinel {ENFORCER[0]} exited early:\n{tail}")
            if self.sentinel("status").returncode == 0 and self._daemon_ready():
                self.watch_since = time.time()  # the report's window: while sentinel watched
                return
            time.sleep(0.2)
        raise LabFailed(f"sentinel not in force after {READY_TIMEOUT:.0f} s")

    def window(self) -> tuple[str, ...]:
        """Report on the time sentinel was watching (its coverage is then complete); the
        `external_calls_last_10m` figure always covers the trailing ten minutes."""
        since = getattr(self, "watch_since", None)
        return ("--since", f"{since:.3f}") if since else ("--last", "10m")

    def _daemon_ready(self) -> bool:
        """`sentinel run` says ready once the resolver, monitor, guard receiver and alerts are
        up; `apply` has no such parts."""
        if ENFORCER != ("run",):
            return True
        try:
            return bool(json.loads((self.state / "daemon.json").read_text()).get("ready"))
        except (OSError, ValueError):
            return False

    def guard_path(self) -> str | None:
        """The guard's PYTHONPATH entry, when the guard can work: the guard fails closed
        without the allowlist sentinel compiles into the state directory, so a sentinel that
        does not write one means the lab runs without the guard (and says so)."""
        done = self.sentinel("guard", "path")
        path = done.stdout.strip()
        if done.returncode != 0 or not path or not Path(path).is_dir():
            self.facts["guard"] = "unavailable: `sentinel guard path` failed"
            return None
        allowlist = self.state / "guard" / "allowlist.json"
        deadline = time.monotonic() + 5
        while not allowlist.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not allowlist.exists():
            self.facts["guard"] = f"not used: sentinel wrote no {allowlist}"
            return None
        self.facts["guard"] = "on"
        return path

    def run_workload(self) -> list[dict[str, Any]]:
        assert self.topo is not None
        guard = self.guard_path()
        self.facts["guard_path"] = guard
        env = {**self.env(), "PYTHONPATH": guard or ""}
        if self.app_cmd is not None:
            done = self.topo.run(
                "app", "sh", "-c", self.app_cmd, env=env, check=False, timeout=APP_TIMEOUT
            )
            (self.evidence / "app-output.txt").write_text(done.stdout + done.stderr)
            self.facts["app"] = {"command": self.app_cmd, "exit_code": done.returncode}
            return []
        done = self.topo.run(
            "app",
            PYTHON,
            str(HELPERS / "workload.py"),
            "--telemetry",
            TELEMETRY,
            env=env,
            check=False,
            timeout=APP_TIMEOUT,
        )
        (self.evidence / "workload.jsonl").write_text(done.stdout)
        (self.evidence / "workload-stderr.txt").write_text(done.stderr)
        if done.returncode != 0:
            raise LabFailed(f"workload failed ({done.returncode}): {done.stderr[-1000:]}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def report(self) -> dict[str, Any] | None:
        done = self.sentinel("report", *self.window(), "--format", "json")
        if done.returncode not in (0, 1) or not done.stdout.strip().startswith("{"):
            self.facts["report_error"] = done.stderr.strip()[-500:]
            return None
        return json.loads(done.stdout)

    def settle(self, guard_on: bool) -> dict[str, Any] | None:
        """Wait (bounded) until every violation shows up at its expected layer in the report,
        when that layer is reporting at all, and until alerts arrived when any were sent."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            rep = self.report()
            done = rep is not None and all(
                v.expected_layer(guard_on) not in active_layers(rep)
                or any(v.matches(a) for a in rep.get("attempts", []))
                for v in VIOLATIONS
            )
            alerts_ok = not rep or not rep.get("attempts") or self.alerts_received()
            if (done and alerts_ok) or time.monotonic() > deadline:
                return rep
            time.sleep(0.5)

    def alerts_received(self) -> list[dict[str, Any]]:
        path = self.evidence / "alerts-received.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def snapshot_kernel(self) -> None:
        assert self.topo is not None
        for name, cmd in {
            "iptables-save-v4.txt": ["iptables-nft-save", "-c"],
            "iptables-save-v6.txt": ["ip6tables-nft-save", "-c"],
            "ipset-save.txt": ["ipset", "save"],
        }.items():
            done = self.topo.run("app", *cmd, check=False)
            (self.evidence / name).write_text(done.stdout or done.stderr)
        outside = []
        for tool in ("iptables-nft", "ip6tables-nft"):
            done = self.topo.run("outside", tool, "-L", "INPUT", "-v", "-n", "-x", check=False)
            outside.append(f"# {tool} (outside host)\n{done.stdout}")
        (self.evidence / "outside-host-counters.txt").write_text("\n".join(outside))
        status = self.sentinel("status", "--format", "json")
        (self.evidence / "status.json").write_text(status.stdout)
        self.facts["status_in_sync"] = status.returncode == 0

    def stop_sentinel(self) -> None:
        if self.enforcer is not None and self.enforcer.poll() is None:
            self.enforcer.terminate()  # SIGTERM: the daemon's orderly stop
            try:
                self.enforcer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.enforcer.kill()
                self.enforcer.wait(timeout=5)
        if self.enforcer is not None:
            self.facts["sentinel_exit_code"] = self.enforcer.returncode

    def close(self) -> None:
        try:
            self.stop_sentinel()
        finally:
            for f in self.files:
                f.close()
            if self.topo is not None:
                self.topo.close()
                self.topo = None


# --- results ----------------------------------------------------------------------------------
def active_layers(rep: dict[str, Any] | None) -> set[str]:
    """Layers that demonstrably reported in this run (a layer not wired up cannot be asked to)."""
    if not rep:
        return set()
    layers = set(rep.get("attempts_by_layer", {}))
    if (rep.get("guard") or {}).get("status") == "ok":
        layers.add("guard")
    return layers


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 4)


def writes_section(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    allowed = [o for o in outcomes if o["kind"] == "allowed"]
    times = [o["elapsed_s"] for o in allowed]
    failed = sum(not o["ok"] for o in allowed)
    return {
        "count": len(allowed),
        "success": bool(allowed) and failed == 0,
        "p50_s": percentile(times, 0.50),
        "p95_s": percentile(times, 0.95),
        "p99_s": percentile(times, 0.99),
        "max_s": round(max(times), 4) if times else 0.0,
        "error_rate": round(failed / len(allowed), 4) if allowed else 0.0,
        "note": "lab: calls to the stand-in upstreams (postgres, neo4j, ollama) through sentinel",
    }


def violations_section(
    outcomes: list[dict[str, Any]], rep: dict[str, Any] | None, guard_on: bool
) -> list[dict[str, Any]]:
    by_action = {o["action"]: o for o in outcomes}
    attempts = (rep or {}).get("attempts", [])
    rows = []
    for v in VIOLATIONS:
        seen = sorted({layer for a in attempts if v.matches(a) for layer in a["layers"]})
        outcome = by_action.get(v.action, {})
        rows.append(
            {
                "action": v.action,
                "what": v.what,
                "target": outcome.get("target"),
                "blocked": bool(outcome) and outcome.get("blocked") is True,
                "error": outcome.get("error"),
                "expected_layer": v.expected_layer(guard_on),
                "layers_seen": seen,
            }
        )
    return rows


def sentinel_fallback(outside_packets: int) -> dict[str, Any]:
    """Used only when `sentinel report` is unavailable: in the lab every non-allowlisted
    destination is the outside host, so its own packet counter is the count of external calls."""
    return {
        "external_calls_last_10m": outside_packets,
        "source": "lab ground truth (sentinel report unavailable)",
    }


def build_results(lab: Lab, outcomes: list, rep: dict | None) -> dict[str, Any]:
    assert lab.topo is not None
    outside = lab.topo.outside_packets()
    guard_on = bool(lab.facts.get("guard_path"))
    violations = violations_section(outcomes, rep, guard_on) if lab.app_cmd is None else []
    alerts = lab.alerts_received()
    sentinel = sentinel_fallback(outside) if rep is None else {"source": "sentinel report"}
    sentinel["ground_truth"] = {
        "outside_host_packets": outside,
        "outside_host_addresses": [OUTSIDE4, OUTSIDE6, lab.topo.v4("outside")],
    }
    return {
        "config": {
            "llm": "lab stand-in (no model): ollama listener on 11434",
            "embedder": "lab stand-in (no model)",
            "base_url": "http://ollama:11434",
            "policy": str(lab.policy_path),
            "enforcer": f"sentinel {' '.join(ENFORCER)}",
        },
        "writes": writes_section(outcomes),
        "db": {"before": None, "after": None, "note": "no database in the lab"},
        "sentinel": sentinel,
        "containers": {
            "healthy": bool(lab.facts.get("status_in_sync"))
            and (lab.enforcer is None or lab.enforcer.poll() is None),
            "sentinel_status_in_sync": bool(lab.facts.get("status_in_sync")),
        },
        "violations": violations,
        "alerts": {
            "received": len(alerts),
            "by_sink": _count_paths(alerts),
        },
        "layers_active": sorted(active_layers(rep)),
        "lab": {**lab.facts, "duration_s": round(time.monotonic() - lab.started, 2)},
    }


def _count_paths(alerts: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in alerts:
        key = a["path"].strip("/").split("/")[0] or "?"
        out[key] = out.get(key, 0) + 1
    return out


def write_results(lab: Lab, results: dict[str, Any]) -> dict[str, Any]:
    """results.json, then `sentinel report --results` merges its `sentinel` section into it and
    writes its evidence bundle; the merged file is read back for the summary."""
    path = lab.out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    if results["sentinel"].get("source") == "sentinel report":
        done = lab.sentinel(
            "report",
            *lab.window(),
            "--format",
            "json",
            "--results",
            str(path),
            "--bundle",
            str(lab.evidence / "bundle"),
        )
        if done.returncode not in (0, 1):
            raise LabFailed(f"sentinel report --results failed: {done.stderr.strip()}")
        (lab.evidence / "report.json").write_text(done.stdout)
    return json.loads(path.read_text())


def lab_ok(results: dict[str, Any]) -> bool:
    calls = results["sentinel"].get("external_calls_last_10m")
    zero = calls == 0 and results["sentinel"]["ground_truth"]["outside_host_packets"] == 0
    blocked = all(v["blocked"] for v in results["violations"])
    writes = results["writes"]["success"] or results["writes"]["count"] == 0
    # zero packets prove something only if the outside host was reachable without sentinel
    control = results["lab"].get("control_reached_outside_before_sentinel") is True
    return zero and blocked and writes and control and results["containers"]["healthy"]


# --- output -----------------------------------------------------------------------------------
def summary(console: Console, results: dict[str, Any], out: Path) -> None:
    s, truth = results["sentinel"], results["sentinel"]["ground_truth"]
    head = Table(title="sentinel lab", show_header=False, title_justify="left")
    head.add_row("external calls (sentinel, last 10m)", str(s.get("external_calls_last_10m")))
    head.add_row("packets at the outside host (ground truth)", str(truth["outside_host_packets"]))
    control = results["lab"].get("control_reached_outside_before_sentinel")
    head.add_row("control: outside reachable before sentinel", str(control))
    head.add_row("blocked attempts (sentinel)", str(s.get("blocked_attempts_last_10m", "n/a")))
    head.add_row("attempts by layer", json.dumps(s.get("attempts_by_layer", {})))
    head.add_row("coverage", str(s.get("coverage", "n/a")))
    w = results["writes"]
    head.add_row("allowed upstream calls", f"{w['count']} ok={w['success']} p95={w['p95_s']}s")
    a = results["alerts"]
    head.add_row("alerts at the local receiver", f"{a['received']} {json.dumps(a['by_sink'])}")
    head.add_row("rules in force (status)", str(results["containers"]["sentinel_status_in_sync"]))
    console.print(head)
    if results["violations"]:
        table = Table(title="scripted violations", title_justify="left")
        for col in ("violation", "target", "blocked", "expected layer", "seen by"):
            table.add_column(col)
        for v in results["violations"]:
            table.add_row(
                v["what"],
                str(v["target"]),
                "[green]yes[/]" if v["blocked"] else "[red]NO[/]",
                v["expected_layer"],
                ", ".join(v["layers_seen"]) or "-",
            )
        console.print(table)
    if "app" in results["lab"]:
        app = results["lab"]["app"]
        console.print(f"--app {app['command']!r} exited {app['exit_code']}")
    verdict = "[green]PASS[/]" if lab_ok(results) else "[red]FAIL[/]"
    console.print(f"{verdict}  results: {out / 'results.json'}  evidence: {out / 'evidence'}")


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

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


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
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
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
