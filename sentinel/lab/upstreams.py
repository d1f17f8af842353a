"""Real DNS servers as the topology's upstream (198.18.0.53 / 2001:db8::53, port 53, in the
`dns` namespace): Debian's dnsmasq and unbound, and a deliberately broken one.

Records use one format for every kind: {name: {"A": [...], "AAAA": [...]} or {"CNAME": target}}.

* **dnsmasq** (the default): records in a `--hostsdir` file (re-read on change), CNAMEs as
  `--cname`. Like the common `--address` set-up, it answers A and **REFUSES AAAA** for a name it
  only has an A record for, and REFUSES names it does not know.
* **unbound**: `local-data` under a static root zone, run as the `unbound` user (no root at
  all: the namespace lets unprivileged processes bind port 53); it answers **NODATA** for a
  missing AAAA, NXDOMAIN for names it does not know, and a CNAME without its target (the
  sentinel asks again for the target).
* **drop-aaaa / servfail-aaaa / truncate**: `tools/dnsserver.py --broken MODE`: AAAA never
  answered (a broken middlebox); AAAA answered SERVFAIL; every UDP answer truncated (TC), so
  the client must ask again over TCP.
* **test**: the project's own server (tools/dnsserver.py), for unit-level cases.

Each server's files live in a private directory removed by `stop()`; each process is stopped
by its pid. Nothing listens outside the `dns` namespace.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sentinel.atomic import write_atomic

if TYPE_CHECKING:
    from sentinel.lab.netns import Topology

KINDS = ("dnsmasq", "unbound", "drop-aaaa", "servfail-aaaa", "truncate", "test")
HELPERS = Path(__file__).parent / "tools"
READY = """
import sys, time, dns.message, dns.query
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        dns.query.udp(dns.message.make_query("ready.check.", "A"), sys.argv[1], timeout=0.2)
        sys.exit(0)
    except Exception:
        time.sleep(0.05)
sys.exit(1)
"""


class DnsUpstream:
    """One upstream server process in the `dns` namespace."""

    kind = "test"

    def __init__(self, topo: Topology, records: dict, ttl: int, port: int = 53) -> None:
        self.topo, self.records, self.ttl, self.port = topo, records, ttl, port
        # world-readable, outside the caller's (0700) tmp dir: unbound reads it as its own user
        self.dir = Path(tempfile.mkdtemp(prefix=f"{topo.prefix}-{self.kind}-"))
        self.dir.chmod(0o755)
        self.proc: subprocess.Popen | None = None

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> DnsUpstream:
        self._write(self.records, self.ttl)
        self.proc = self.topo.spawn("dns", *self._command(), stderr=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def set_records(self, records: dict, ttl: int) -> None:
        self.records, self.ttl = records, ttl
        self._write(records, ttl)
        self._reload()

    def stop(self) -> None:
        """Upstream down (the process is stopped by its pid; the files stay for a restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _wait_ready(self, timeout: float = 10.0) -> None:
        from sentinel.lab.netns import PYTHON

        address = self.topo.v4("dns")
        probe = self.topo.run(
            "dns", PYTHON, "-c", READY, address, str(timeout), check=False, timeout=timeout + 5
        )
        if probe.returncode != 0 or (self.proc is not None and self.proc.poll() is not None):
            raise RuntimeError(f"{self.kind} upstream did not answer within {timeout}s")

    def _reload(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    # --- per kind ---------------------------------------------------------------------
    def _command(self) -> list[str]:
        from sentinel.lab.netns import PYTHON

        args = [PYTHON, str(HELPERS / "dnsserver.py"), str(self.dir / "records.json")]
        return [*args, str(self.port), "--seconds", "3600", *self._extra()]

    def _extra(self) -> list[str]:
        return []

    def _write(self, records: dict, ttl: int) -> None:
        write_atomic(self.dir / "records.json", json.dumps({"ttl": ttl, "records": records}), 0o644)


class TestServer(DnsUpstream):
    kind = "test"

    def _reload(self) -> None:  # it re-reads its file when the mtime changes
        pass


class Broken(TestServer):
    def __init__(self, topo: Topology, records: dict, ttl: int, port: int, mode: str) -> None:
        self.kind = mode
        super().__init__(topo, records, ttl, port)

    def _extra(self) -> list[str]:
        return ["--broken", self.kind]


class Dnsmasq(DnsUpstream):
    kind = "dnsmasq"

    def _command(self) -> list[str]:
        cmd = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            f"--listen-address={self.topo.v4('dns')}",
            f"--listen-address={self.topo.v6('dns')}",
            f"--port={self.port}",
            "--user=nobody",
            "--pid-file=",
            f"--local-ttl={self.ttl}",
            f"--hostsdir={self.dir / 'hosts.d'}",
        ]
        self.cnames = _cnames(self.records)
        return cmd + [f"--cname={alias},{target}" for alias, target in sorted(self.cnames)]

    def _write(self, records: dict, ttl: int) -> None:
        hosts = self.dir / "hosts.d"
        hosts.mkdir(exist_ok=True)
        hosts.chmod(0o755)
        lines = [
            f"{address} {name}"
            for name, entry in sorted(records.items())
            for kind in ("A", "AAAA")
            for address in entry.get(kind, [])
        ]
        write_atomic(hosts / "records", "\n".join(lines) + "\n", 0o644, tmp_dir=self.dir)

    def set_records(self, records: dict, ttl: int) -> None:
        restart = ttl != self.ttl or _cnames(records) != getattr(self, "cnames", set())
        self.records, self.ttl = records, ttl
        self._write(records, ttl)
        if restart:  # TTL and CNAMEs are command-line options: a new process takes them
            self.stop()
            self.proc = self.topo.spawn("dns", *self._command(), stderr=subprocess.DEVNULL)
            self._wait_ready()
        else:
            self._reload()  # SIGHUP: re-reads the hosts directory and clears the cache


class Unbound(DnsUpstream):
    kind = "unbound"

    def start(self) -> DnsUpstream:
        # the namespace lets unprivileged processes bind low ports: unbound never needs root
        self.topo.run("dns", "sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0")
        return super().start()

    def _command(self) -> list[str]:
        conf = self.dir / "unbound.conf"
        conf.write_text(
            "server:\n"
            f"  interface: {self.topo.v4('dns')}\n"
            f"  interface: {self.topo.v6('dns')}\n"
            f"  port: {self.port}\n"
            '  username: ""\n  chroot: ""\n  pidfile: ""\n'
            f'  directory: "{self.dir}"\n'
            "  do-daemonize: no\n  use-syslog: no\n  verbosity: 0\n  num-threads: 1\n"
            '  module-config: "iterator"\n  auto-trust-anchor-file: ""\n'
            "  access-control: 198.18.0.0/15 allow\n  access-control: 2001:db8::/32 allow\n"
            '  local-zone: "." static\n'
            f'  include: "{self.dir / "records.conf"}"\n'
            "remote-control:\n  control-enable: no\n"
        )
        user = "unbound" if _user_exists("unbound") else "nobody"
        group = "unbound" if user == "unbound" else "nogroup"
        setpriv = ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups"]
        return [*setpriv, "unbound", "-d", "-c", str(conf)]

    def _write(self, records: dict, ttl: int) -> None:
        lines = []
        for name, entry in sorted(records.items()):
            owner = name.rstrip(".") + "."
            if "CNAME" in entry:
                lines.append(f'  local-data: "{owner} {ttl} IN CNAME {entry["CNAME"]}"')
            for kind in ("A", "AAAA"):
                for address in entry.get(kind, []):
                    lines.append(f'  local-data: "{owner} {ttl} IN {kind} {address}"')
        write_atomic(self.dir / "records.conf", "\n".join(lines) + "\n", 0o644)


def start_upstream(
    topo: Topology, kind: str, records: dict, ttl: int, port: int = 53
) -> DnsUpstream:
    if kind not in KINDS:
        raise ValueError(f"dns upstream kind {kind!r} is not one of: {', '.join(KINDS)}")
    if kind == "dnsmasq":
        server: DnsUpstream = Dnsmasq(topo, records, ttl, port)
    elif kind == "unbound":
        server = Unbound(topo, records, ttl, port)
    elif kind == "test":
        server = TestServer(topo, records, ttl, port)
    else:
        server = Broken(topo, records, ttl, port, kind)
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


def _cnames(records: dict) -> set[tuple[str, str]]:
    return {(n, e["CNAME"].rstrip(".")) for n, e in records.items() if "CNAME" in e}


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
