"""The shipped compose file running under the suite's engine, plus the test-only parts.

`Stack.up()` writes an override (test-only services, the stand-ins' images, telemetry on, alert
sinks pointed at the local receiver, a fixed subnet) next to the shipped deploy/compose.yaml,
starts the upstream DNS server in the engine's namespace and runs `docker-compose up -d`.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

from e2e import images
from e2e.engine import DNS_ADDR, Engine, EngineError

ROOT = images.ROOT
SUBNET = "198.18.140.0/24"
OUTSIDE_IP = "198.18.140.100"
ALERTS_IP = "198.18.140.88"
PROJECT = "mem0-sentinel"
# every external name the stack may try; all resolve to the outside container
EXTERNAL_NAMES = (
    "api.openai.com",
    "us.i.posthog.com",
    "us-api.i.posthog.com",
    "app.posthog.com",
    "api.mem0.ai",
    "huggingface.co",
    "events.pagerduty.com",
    "hooks.slack.com",
    "pypi.org",
)
PASSWORDS = {"POSTGRES_PASSWORD": "e2e-pg-secret-4c1d", "NEO4J_PASSWORD": "e2e-neo4j-secret-77a2"}
WEBHOOK_SECRET = "e2e-webhook-hmac-9f3e"


def override(stack_dir: pathlib.Path) -> dict:
    tool = {
        "image": "sentinel:local",  # has Python and dnspython; the image's healthcheck is not theirs
        "volumes": [f"{stack_dir}:/stack:ro"],
        "restart": "no",
        "healthcheck": {"disable": True},
    }
    return {
        "services": {
            "mem0": {
                # the test leaves mem0's telemetry ON: its real home-calls must be stopped
                "environment": {"MEM0_TELEMETRY": "True", "MEM0_TELEMETRY_SAMPLE_RATE": "1.0"},
            },
            "postgres": {"image": "sentinel-e2e-postgres:local"},
            "neo4j": {**tool, "entrypoint": ["python", "/stack/listener.py", "7474", "7687"]},
            "ollama": {**tool, "entrypoint": ["python", "/stack/ollama_standin.py"]},
            "outside": {
                **tool,
                "entrypoint": ["python", "/stack/outside.py", OUTSIDE_IP],
                "networks": {"default": {"ipv4_address": OUTSIDE_IP}},
            },
            "alerts": {
                **tool,
                "entrypoint": [
                    "python",
                    "-m",
                    "sentinel.lab.alertreceiver",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    "8088",
                    "--seconds",
                    "7200",
                ],
                "networks": {"default": {"ipv4_address": ALERTS_IP}},
            },
            "sentinel": {
                "environment": {
                    "SLACK_WEBHOOK_URL": f"http://{ALERTS_IP}:8088/slack",
                    "SENTINEL_WEBHOOK_URL": f"http://{ALERTS_IP}:8088/webhook",
                    "SENTINEL_WEBHOOK_SECRET": WEBHOOK_SECRET,
                },
            },
        },
        "networks": {"default": {"ipam": {"config": [{"subnet": SUBNET}]}}},
    }


class Stack:
    def __init__(self, engine: Engine, workdir: pathlib.Path) -> None:
        self.engine = engine
        self.workdir = workdir
        self.override = workdir / "compose.e2e.yaml"
        self.dns_log = workdir / "upstream-dns.jsonl"
        self.dns_proc: subprocess.Popen | None = None
        self.env = {**engine.env, **PASSWORDS, "COMPOSE_HTTP_TIMEOUT": "180"}

    # -- running ---------------------------------------------------------------------------
    def compose(self, *args: str, check: bool = True, timeout: float = 300, **kw):
        argv = [
            "docker-compose",
            "--no-ansi",
            "-p",
            PROJECT,
            "-f",
            str(ROOT / "deploy/compose.yaml"),
            "-f",
            str(self.override),
            *args,
        ]
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(argv, env=self.env, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise EngineError(f"docker-compose {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc

    def exec(self, service: str, *argv: str, check: bool = True, timeout: float = 120, **kw):
        return self.compose("exec", "-T", service, *argv, check=check, timeout=timeout, **kw)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def up(self) -> None:
        records = self.workdir / "records.json"
        records.write_text(
            json.dumps(
                {
                    "ttl": 30,
                    "records": {n: {"A": [OUTSIDE_IP]} for n in EXTERNAL_NAMES},
                }
            )
        )
        self.dns_log.write_text("")
        self.dns_proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.engine.ns,
                sys.executable,
                str(images.STACK / "upstream_dns.py"),
                str(records),
                str(self.dns_log),
                DNS_ADDR,
                "53",
                "--seconds",
                "7200",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if self.dns_proc.stdout.readline().strip() != "ready":
            raise EngineError("upstream DNS server did not start")
        self.override.write_text(json.dumps(override(images.STACK), indent=1))
        self.compose("up", "-d", "--no-build", timeout=600)

    def down(self) -> None:
        try:
            self.compose("down", "-v", "-t", "2", check=False, timeout=300)
        finally:
            if self.dns_proc is not None:
                self.dns_proc.terminate()
                try:
                    self.dns_proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.dns_proc.kill()
                    self.dns_proc.wait(timeout=10)

    # -- state -----------------------------------------------------------------------------
    def health(self, service: str) -> str:
        cid = self.container(service)
        if not cid:
            return "missing"
        out = self.engine.docker(
            "inspect",
            "-f",
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
            cid,
            check=False,
        ).stdout.split()
        return out[-1] if out else "missing"

    def wait_healthy(self, services: tuple[str, ...], timeout: float = 240) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {s: self.health(s) for s in services}
            if all(v == "healthy" for v in states.values()):
                return states
            time.sleep(1)
        return states

    def outside_counts(self) -> dict:
        out = self.engine.docker(
            "exec", self.container("outside"), "cat", "/tmp/outside.json"
        ).stdout
        return json.loads(out)

    def upstream_queries(self) -> list[dict]:
        return [json.loads(line) for line in self.dns_log.read_text().splitlines() if line]

    def alerts_received(self) -> list[dict]:
        out = self.engine.docker("logs", self.container("alerts"), check=False)
        rows = []
        for line in (out.stdout + out.stderr).splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        return rows

    def psql(self, sql: str) -> str:
        return self.exec(
            "postgres",
            "psql",
            "-At",
            "-U",
            "mem0",
            "-d",
            "mem0",
            "-c",
            sql,
        ).stdout.strip()

    def in_engine(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", self.engine.ns, *argv], **kw)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "-t", check=False, timeout=120).stdout
