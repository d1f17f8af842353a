"""Soak: `sentinel run` under a steady mix of allowed traffic and bypass attempts for N minutes.

Run as root: `python bench/bench_soak.py [--minutes 30] [--rate 20]`. Everything happens in a
fresh namespace topology (unique prefix, deleted at the end, also on failure); traffic goes only
to 198.18.0.0/24 addresses those namespaces own, and to loopback. Loops are bounded in count and
time. It is not a test: it prints the figures (docs/hardening.md).

Workload in the app namespace, every second: `--allowed` lookups+connects through the
sentinel's resolver to the postgres and ollama stand-ins, `--rate` attempts to 198.18.5.5
(alternating TCP connect / UDP datagram, a new destination port each), one refused DNS name.
A local webhook receiver on 127.0.0.1 is the alert sink. Every 10 s the daemon's RSS and open
fds are sampled. At the end: RSS/fds first vs last vs max; attempts made vs events stored vs
the kernel's NFLOG counter (no loss); alerts received (bounded by dedup and roll-ups).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from sentinel.lab.netns import PYTHON, Topology

RECORDS = {
    "postgres": {"A": ["198.18.0.2"]},
    "ollama": {"A": ["198.18.0.4"]},
    "api.openai.com": {"A": ["198.18.5.5"]},
}
POLICY = """\
version: 1
mode: enforce
allow:
  - {name: postgres, host: postgres, ports: [5432], protocol: tcp}
  - {name: ollama,   host: ollama,   ports: [11434], protocol: tcp}
dns: {min_ttl: 5s, max_ttl: 1h, stale_grace: 10s, listen_port: 5300}
monitor: {tamper_interval: 5s}
alerts:
  webhook: {url_env: SOAK_WEBHOOK_URL}
"""
RECEIVER_PORT = 18199

WORKLOAD = r"""
import json, socket, sys, time
import dns.message, dns.query
seconds, rate, allowed = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
made = {"attempts": 0, "tcp": 0, "udp": 0, "dns_refused": 0, "allowed_ok": 0, "allowed_failed": 0}
start = time.monotonic()
end = start + seconds
tick = 0
def resolve(name):
    r = dns.query.udp(dns.message.make_query(name, "A"), "198.18.0.53", timeout=2)
    return [x.address for rr in r.answer for x in rr], r.rcode()
while time.monotonic() < end:
    for j in range(rate):  # attempts, paced over the second
        port = 20000 + (made["attempts"] % 10000)
        if made["attempts"] % 2:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.settimeout(0.5)
            try:
                s.connect(("198.18.5.5", port))
            except OSError:
                pass
            made["tcp"] += 1
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.sendto(b"soak", ("198.18.5.5", port))
            except OSError:
                pass
            made["udp"] += 1
        s.close()
        made["attempts"] += 1
        due = start + tick + (j + 1) / (rate + 1)
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
    for k in range(allowed):  # allowed traffic through the sentinel's resolver
        name, port = (("postgres", 5432), ("ollama", 11434))[k % 2]
        try:
            addresses, _ = resolve(name)
            c = socket.create_connection((addresses[0], port), timeout=2)
            c.recv(64); c.close()
            made["allowed_ok"] += 1
        except Exception:
            made["allowed_failed"] += 1
    try:
        resolve("api.openai.com")  # refused by name: a DNS-layer attempt
        made["dns_refused"] += 1
    except Exception:
        pass
    tick += 1
    pause = start + tick - time.monotonic()
    if pause > 0:
        time.sleep(pause)
print(json.dumps(made), flush=True)
"""


def sample(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
    return {
        "t": time.time(),
        "rss_mb": round(rss_kb / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class Lines:
    def __init__(self, stream) -> None:  # noqa: ANN001
        self.items: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:  # noqa: ANN001
        for line in stream:
            self.items.append(line)


def soak(minutes: float, rate: int, allowed: int) -> dict:
    seconds = minutes * 60
    work = Path(tempfile.mkdtemp(prefix="sentinel-soak-"))
    state = work / "state"
    os.environ["SENTINEL_STATE_DIR"] = str(state)
    topo = Topology().build()
    try:
        dns_server(topo, work, seconds + 300)
        long_listeners(topo, seconds + 300)
        receiver = topo.spawn(
            "app", PYTHON, "-m", "sentinel.lab.alertreceiver", "--host", "127.0.0.1",
            "--port", str(RECEIVER_PORT), "--seconds", str(seconds + 300),
        )  # fmt: skip
        assert receiver.stdout.readline().strip() == "ready"
        alerts = Lines(receiver.stdout)
        (work / "policy.yaml").write_text(POLICY)
        ready = work / "ready"
        daemon = topo.spawn(
            "app", str(Path(PYTHON).with_name("sentinel")), "run",
            "--policy", str(work / "policy.yaml"), "--ready-file", str(ready),
            env={"SENTINEL_STATE_DIR": str(state),
                 "SOAK_WEBHOOK_URL": f"http://127.0.0.1:{RECEIVER_PORT}/webhook"},
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert daemon.poll() is None and time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.2)
        since = time.time() - 1
        load = topo.spawn("app", PYTHON, "-c", WORKLOAD, str(seconds), str(rate), str(allowed))
        samples = [sample(daemon.pid)]
        stop_at = time.monotonic() + seconds + 120  # hard bound
        while load.poll() is None and time.monotonic() < stop_at:
            time.sleep(min(10.0, max(0.1, stop_at - time.monotonic())))
            samples.append(sample(daemon.pid))
            print(json.dumps({"sample": samples[-1]}), flush=True)
        made = json.loads(load.stdout.read().strip().splitlines()[-1])
        time.sleep(5)  # fold window (2 s) + the store's flush
        samples.append(sample(daemon.pid))
        out = topo.sentinel(
            "report", "--since", str(since), "--format", "json",
            env={"SENTINEL_STATE_DIR": str(state)},
        )  # fmt: skip
        report = json.loads(out.stdout)
        outside = topo.outside_packets()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
        return figures(minutes, rate, samples, made, report, alerts.items, outside)
    finally:
        topo.close()


def dns_server(topo: Topology, work: Path, seconds: float) -> None:
    """The soak's upstream: a real dnsmasq (the topology's default kind), which has no time
    limit of its own, so it outlives the soak."""
    topo.start_dns_server(RECORDS, work, ttl=30)


def long_listeners(topo: Topology, seconds: float) -> None:
    """build() starts the stand-ins for 900 s: replace ours (by pid) with ones that outlive
    the soak."""
    for host in ("postgres", "ollama"):
        for proc in list(topo.procs):
            if topo.ns(host) in proc.args and "listener.py" in " ".join(proc.args):
                proc.kill()
                proc.wait(timeout=5)
        topo.start_listener(host, seconds=seconds)


def figures(minutes, rate, samples, made, report, alerts, outside) -> dict:  # noqa: ANN001
    counters = report["coverage_detail"]["window_counters"]
    by_layer = report["attempts_by_layer"]
    return {
        "minutes": minutes,
        "attempt_rate_per_s": rate,
        "rss_mb": {
            "first": samples[0]["rss_mb"],
            "last": samples[-1]["rss_mb"],
            "max": max(s["rss_mb"] for s in samples),
        },
        "fds": {
            "first": samples[0]["fds"],
            "last": samples[-1]["fds"],
            "max": max(s["fds"] for s in samples),
        },
        "samples": len(samples),
        "workload": made,
        "attempts_made_netfilter": made["tcp"] + made["udp"],
        "events_stored_netfilter": by_layer.get("netfilter", 0),
        "events_stored_dns": by_layer.get("dns", 0),
        "nflog_packets_kernel": counters["nflog_packets_kernel"],
        "nflog_packets_stored": counters["nflog_packets_stored"],
        "window_counters_exact": counters["exact"],
        "unaccounted_packets": report["unaccounted_packets"],
        "shed_events": report["shed_events"],
        "monitor_loss": report["monitor_loss"],
        "coverage": report["coverage"],
        "alerts_received": len(alerts),
        "outside_packets": outside,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=20, help="attempts per second (max 200)")
    parser.add_argument("--allowed", type=int, default=10, help="allowed connects per second")
    args = parser.parse_args()
    rate = max(1, min(args.rate, 200))
    allowed = max(0, min(args.allowed, 100))
    print(json.dumps(soak(args.minutes, rate, allowed), indent=2))


if __name__ == "__main__":
    main()
