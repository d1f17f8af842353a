"""Shared fixtures. Namespace tests need root; CI sets SENTINEL_REQUIRE_NETNS=1 so that a
missing capability fails the run instead of skipping it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON, Topology


def unavailable(reason: str) -> None:
    """Skip for a missing tool or privilege, but fail where CI requires everything to run."""
    if os.environ.get("SENTINEL_REQUIRE_NETNS") == "1":
        pytest.fail(f"required but unavailable under SENTINEL_REQUIRE_NETNS=1: {reason}")
    pytest.skip(reason)


def needs_tools(*tools: str) -> None:
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        unavailable(f"needs {', '.join(missing)}")


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables-nft-restore", "ip6tables-nft-restore", "ipset"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    path = tmp_path / "state"
    monkeypatch.setenv("SENTINEL_STATE_DIR", str(path))
    return path


@pytest.fixture
def topo(state_dir):
    """A fresh namespace topology per test, always deleted."""
    reason = _netns_unavailable()
    if reason:
        unavailable(reason)
    topology = Topology().build()
    try:
        yield topology
    finally:
        topology.close()


# --- shared set-up of the namespace tests: a running sentinel, DNS queries, the alert receiver
BASE = "http://198.18.5.5:8088"  # the alert receiver in the `outside` namespace

RECORDS = {
    "postgres": {"A": ["198.18.0.2"], "AAAA": ["2001:db8::2"]},
    "neo4j": {"A": ["198.18.0.3"], "AAAA": ["2001:db8::3"]},
    "ollama": {"A": ["198.18.0.4"], "AAAA": ["2001:db8::4"]},
    "cache.internal": {"CNAME": "postgres"},
    "api.openai.com": {"A": ["198.18.5.5"], "AAAA": ["2001:db8::5"]},
    "telemetry.example.com": {"A": ["198.18.5.5"]},
}

POLICY = """\
version: 1
mode: enforce
allow:
  - {{name: postgres, host: postgres, ports: [5432, 5433], protocol: tcp}}
  - {{name: neo4j,    host: neo4j,    ports: [7474, 7687], protocol: tcp}}
  - {{name: ollama,   host: ollama,   ports: [11434], protocol: tcp}}
  - {{name: cache,    host: cache.internal, ports: [5432], protocol: tcp}}
dns: {{min_ttl: {min_ttl}, max_ttl: 1h, stale_grace: {grace}, listen_port: 5300}}
monitor: {{tamper_interval: {tamper}}}
tests:
  - {{to: "postgres:5432", expect: allow}}
  - {{to: "198.18.5.5:443", expect: deny}}
"""

QUERY = """
import json, sys, dns.message, dns.query, dns.rcode
name, qtype, server, port, tcp = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
q = dns.message.make_query(name, qtype)
try:
    r = (dns.query.tcp if tcp else dns.query.udp)(q, server, port=port, timeout=3)
    out = {"rcode": dns.rcode.to_text(r.rcode()),
           "addresses": sorted(x.address for rr in r.answer for x in rr if hasattr(x, "address")),
           "ttl": min((rr.ttl for rr in r.answer), default=None)}
except Exception as exc:
    out = {"rcode": "ERROR", "error": f"{type(exc).__name__}: {exc}", "addresses": []}
print(json.dumps(out))
"""


def policy_text(min_ttl: str = "1s", grace: str = "3s", tamper: str = "1s") -> str:
    return POLICY.format(min_ttl=min_ttl, grace=grace, tamper=tamper)


def query(
    topo: Topology,
    name: str,
    qtype: str = "A",
    server: str = "198.18.0.53",
    port: int = 53,
    tcp: bool = False,
) -> dict:
    out = topo.run(
        "app",
        PYTHON,
        "-c",
        QUERY,
        name,
        qtype,
        server,
        str(port),
        "1" if tcp else "0",
        timeout=20,
    )
    return json.loads(out.stdout)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


class RunningSentinel:
    """`sentinel run` in the app namespace; its JSON log lines land in `self.lines`."""

    def __init__(self, topo: Topology, policy: Path, *args: str) -> None:
        exe = str(Path(PYTHON).with_name("sentinel"))
        self.proc = topo.spawn(
            "app",
            exe,
            "run",
            "--policy",
            str(policy),
            *args,
            env={"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]},
        )
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        running = wait_for(lambda: self.find("running") or self.proc.poll() is not None, 30)
        assert running and self.proc.poll() is None, "sentinel run did not start:\n" + self.log()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def log(self) -> str:
        return "".join(self.raw[-60:])

    def find(self, event: str, **match: object) -> list[dict]:
        return [
            x
            for x in list(self.lines)
            if x.get("event") == event and all(x.get(k) == v for k, v in match.items())
        ]

    def events(self, kind: str, **match: object) -> list[dict]:
        return self.find("event", kind=kind, **match)

    def wait_event(self, kind: str, timeout: float = 10.0, **match: object) -> dict:
        found = wait_for(lambda: self.events(kind, **match), timeout)
        assert found, f"no {kind} event {match} within {timeout}s:\n{self.log()}"
        return found[0]

    def stop(self, timeout: float = 15.0) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def upstream(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    return topo


def start(topo: Topology, tmp_path: Path, *args: str, **policy: str) -> RunningSentinel:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(**policy))
    return RunningSentinel(topo, path, *args)


def status_json(topo: Topology) -> dict:
    out = topo.sentinel(
        "status", "--format", "json", env={"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]}
    )
    return json.loads(out.stdout)


ONLY_OLLAMA = """\
version: 1
allow:
  - {name: ollama, host: ollama, ports: [11434]}
dns: {min_ttl: 1s, stale_grace: 2s}
monitor: {tamper_interval: 1s}
"""


def editor_save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def configmap_mount(mount: Path, text: str) -> Path:
    """A ConfigMap volume as the kubelet lays it out (..v1, the ..data link, policy.yaml linked
    through it); returns the policy path the daemon is given."""
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "policy.yaml").write_text(text)
    (mount / "..data").symlink_to("..v1")
    (mount / "policy.yaml").symlink_to("..data/policy.yaml")
    return mount / "policy.yaml"


def configmap_update(mount: Path, version: str, text: str) -> None:
    """What the kubelet does: new timestamped dir, then an atomic rename of the ..data link."""
    (mount / version).mkdir()
    (mount / version / "policy.yaml").write_text(text)
    (mount / "..data_tmp").symlink_to(version)
    os.replace(mount / "..data_tmp", mount / "..data")


def report(topo: Topology, since: float, fmt: str = "json") -> dict | str:
    """`sentinel report --since SINCE` in the app namespace: the document, or the table text."""
    out = topo.sentinel(
        "report",
        "--since",
        str(since),
        "--format",
        fmt,
        env={"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]},
    )
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout) if fmt == "json" else out.stdout


class Lines:
    """Collects a spawned receiver's JSON lines in the background."""

    def __init__(self, stream) -> None:
        self.items: list[dict] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            if line.startswith("{"):
                self.items.append(json.loads(line))

    def wait(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.items) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.items)


def spawn_alert_receiver(
    topo: Topology,
    host: str = "outside",
    address: str = "198.18.5.5",
    port: int = 8088,
    seconds: int = 240,
) -> subprocess.Popen:
    """The recording alert receiver (sentinel.lab.alertreceiver) in `host`, up and ready."""
    proc = topo.spawn(
        host, PYTHON, "-m", "sentinel.lab.alertreceiver", "--host", address,
        "--port", str(port), "--seconds", str(seconds),
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def receiver(topo):
    """The alert receiver at BASE; its requests land in `.items`."""
    return Lines(spawn_alert_receiver(topo).stdout)


def scrape(topo) -> dict[str, float]:
    out = topo.run(
        "app",
        PYTHON,
        "-c",
        "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9464/metrics',"
        " timeout=5).read().decode())",
    ).stdout
    values = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def by_layer(values: dict[str, float]) -> dict[str, int]:
    """A scrape's `sentinel_blocked_attempts_total` summed per layer (the report's count)."""
    out: dict[str, int] = {}
    for name, value in values.items():
        if name.startswith("sentinel_blocked_attempts_total{") and value:
            layer = name.split('layer="', 1)[1].split('"', 1)[0]
            out[layer] = out.get(layer, 0) + int(value)
    return out


def tree_hash(root: Path) -> dict[str, str]:
    """Every file below `root` and its SHA-256: what "byte-identical" compares."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
