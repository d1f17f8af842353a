"""One lab run's steps: output directories, the namespaces, the control probe, the alert
receiver, sentinel itself, the workload, and the kernel snapshot; `close()` tears it all down
(every process stopped by pid, every namespace deleted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from sentinel.lab.netns import HELPERS, PYTHON, Topology
from sentinel.lab.scenario import (
    ALERT_PORT,
    APP_TIMEOUT,
    ENFORCER,
    LAB_POLICY,
    LAB_SECRETS,
    MARKER,
    OPENAI,
    OUTSIDE4,
    OUTSIDE6,
    READY_TIMEOUT,
    SETTLE_TIMEOUT,
    TELEMETRY,
    VIOLATIONS,
    active_layers,
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
        if self.out.exists() and not self.out.is_dir():
            raise LabFailed(f"{self.out} is not a directory: pick --out")
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
        # a real resolver nobody here wrote (Debian's dnsmasq), as most deployments have
        self.topo.start_dns_server(records, self.state, ttl=60, kind="dnsmasq")
        self.facts["dns_upstream"] = "dnsmasq"
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
        up."""
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
        when that layer is reporting at all, until alerts arrived when any were sent, and
        until a monitor heartbeat fell inside the window (every 5 s: a window shorter than
        that, without one, is coverage `partial`, "no monitor heartbeat in the window")."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            rep = self.report()
            beats = ((rep or {}).get("coverage_detail") or {}).get("monitor_heartbeats")
            done = bool(beats) and all(
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
