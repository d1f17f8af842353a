"""A throwaway network of namespaces: the app, its upstreams, a DNS host and an "outside" host
(used by tests, the lab and benchmarks).

Everything lives on 198.18.0.0/24 and 2001:db8::/64 behind one bridge in a switch namespace;
nothing is linked to the root namespace. Names carry a per-run prefix so parallel runs never
clash, and `close()` deletes every namespace and stops every process it started, by pid.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sentinel.atomic import write_atomic

HELPERS = Path(__file__).parent / "tools"
PYTHON = sys.executable
V4 = "198.18.0.{}"
V6 = "2001:db8::{}"
HOSTS = {  # name -> (last octet, listening ports)
    "app": (10, ()),
    "postgres": (2, (5432,)),
    "neo4j": (3, (7474, 7687)),
    "ollama": (4, (11434,)),
    "dns": (53, ()),
    "outside": (99, (443, 80, 853, 5432, 11434)),
}


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60, **kw)


@dataclass
class Topology:
    prefix: str = field(default_factory=lambda: f"sn{secrets.token_hex(3)}")
    procs: list[subprocess.Popen] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def v4(self, host: str) -> str:
        return V4.format(HOSTS[host][0])

    def v6(self, host: str) -> str:
        return V6.format(HOSTS[host][0])

    # --- building -------------------------------------------------------------------
    def build(self, hosts: tuple[str, ...] = tuple(HOSTS)) -> Topology:
        try:
            self._add_ns("sw")
            self.ip("sw", "link", "add", "br0", "type", "bridge")
            self.ip("sw", "link", "set", "br0", "up")
            for i, host in enumerate(hosts):
                self._add_host(host, i)
            self._write_etc()
            for host in hosts:
                if HOSTS[host][1]:
                    self.start_listener(host)
            self._count_outside()
        except BaseException:
            self.close()
            raise
        return self

    def _add_ns(self, host: str) -> None:
        sh("ip", "netns", "add", self.ns(host))
        self.created.append(self.ns(host))
        self.ip(host, "link", "set", "lo", "up")

    def _add_host(self, host: str, index: int) -> None:
        self._add_ns(host)
        peer = f"{self.prefix[-6:]}p{index}"
        # created inside the switch namespace, so nothing ever appears in the root namespace
        self.ip(
            "sw",
            "link",
            "add",
            peer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.ns(host),
        )
        self.ip("sw", "link", "set", peer, "master", "br0", "up")
        self.ip(host, "addr", "add", f"{self.v4(host)}/24", "dev", "eth0")
        self.ip(host, "-6", "addr", "add", f"{self.v6(host)}/64", "dev", "eth0", "nodad")
        self.ip(host, "link", "set", "eth0", "up")
        if host == "outside":  # also owns the "external" addresses tests aim at
            self.ip(host, "addr", "add", "198.18.5.5/24", "dev", "eth0")
            self.ip(host, "-6", "addr", "add", "2001:db8::5/64", "dev", "eth0", "nodad")
        if host == "app":  # a route for 198.18.5.0/24 via the outside host, like a default route
            self.ip(host, "route", "add", "198.18.5.0/24", "via", self.v4("outside"))

    def _write_etc(self) -> None:
        """`ip netns exec` bind-mounts /etc/netns/NAME/* over /etc: names for the app."""
        etc = Path("/etc/netns") / self.ns("app")
        etc.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        for host in ("postgres", "neo4j", "ollama"):
            lines += [f"{self.v4(host)} {host}", f"{self.v6(host)} {host}"]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        (etc / "resolv.conf").write_text(f"nameserver {self.v4('dns')}\n")

    def _count_outside(self) -> None:
        for tool, addrs in (
            ("iptables-nft", ("198.18.0.99", "198.18.5.5")),
            ("ip6tables-nft", ("2001:db8::99", "2001:db8::5")),
        ):
            for addr in addrs:
                self.run(
                    "outside",
                    tool,
                    "-A",
                    "INPUT",
                    "-d",
                    addr,
                    "-m",
                    "comment",
                    "--comment",
                    "ground-truth",
                )

    def start_listener(self, host: str, seconds: float = 900) -> None:
        ports = [str(p) for p in HOSTS[host][1]]
        proc = self.spawn(
            host, PYTHON, str(HELPERS / "listener.py"), host, *ports, "--seconds", str(seconds)
        )
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"listener in {host} did not start: {line!r}"

    # --- running --------------------------------------------------------------------
    def ip(self, host: str, *args: str) -> None:
        sh("ip", "-n", self.ns(host), *args)

    def run(
        self, host: str, *cmd: str, check: bool = True, env: dict | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *cmd],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )

    def spawn(self, host: str, *cmd: str, env: dict | None = None, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *cmd],
            stdout=kw.pop("stdout", subprocess.PIPE),
            stderr=kw.pop("stderr", subprocess.PIPE),
            text=True,
            env={**os.environ, **(env or {})},
            **kw,
        )
        self.procs.append(proc)
        return proc

    def probe(self, proto: str, host: str, port: int, timeout: float = 2.0) -> dict:
        out = self.run(
            "app",
            PYTHON,
            str(HELPERS / "probe.py"),
            proto,
            host,
            str(port),
            "--timeout",
            str(timeout),
        )
        return json.loads(out.stdout)

    def outside_packets(self) -> int:
        """Ground truth: IP packets that reached the outside host's addresses."""
        total = 0
        for tool in ("iptables-nft", "ip6tables-nft"):
            out = self.run("outside", tool, "-L", "INPUT", "-v", "-n", "-x").stdout
            total += sum(
                int(line.split()[0]) for line in out.splitlines() if "ground-truth" in line
            )
        return total

    def sentinel(
        self, *args: str, env: dict | None = None, check: bool = False, host: str = "app"
    ) -> subprocess.CompletedProcess:
        exe = str(Path(PYTHON).with_name("sentinel"))
        return self.run(host, exe, *args, env=env, check=check)

    # --- teardown -------------------------------------------------------------------
    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        for name in reversed(self.created):
            sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(Path("/etc/netns") / self.ns("app"), ignore_errors=True)
        self.created.clear()

    # --- test DNS server (issue 4) ----------------------------------------------------
    def start_dns_server(
        self, records: dict, directory: Path, ttl: int = 5, port: int = 53
    ) -> subprocess.Popen:
        """A real DNS server in the `dns` namespace (198.18.0.53, 2001:db8::53) answering
        `records` ({name: {"A": [...], "AAAA": [...]} or {"CNAME": target}}); its records
        file lives in `directory` (the caller's tmp dir, so it is cleaned up with it)."""
        self.dns_records_path = Path(directory) / f"{self.prefix}-dns.json"
        self.set_dns_records(records, ttl)
        proc = self.spawn(
            "dns", PYTHON, str(HELPERS / "dnsserver.py"), str(self.dns_records_path), str(port)
        )
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"dns server did not start: {line!r}"
        self.dns_proc = proc
        return proc

    def set_dns_records(self, records: dict, ttl: int = 5) -> None:
        """Change the test DNS server's answers (atomic rewrite; it re-reads on change)."""
        write_atomic(self.dns_records_path, json.dumps({"ttl": ttl, "records": records}), 0o644)

    def stop_dns_server(self) -> None:
        """Upstream down: stop the test DNS server (by pid)."""
        proc = getattr(self, "dns_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
