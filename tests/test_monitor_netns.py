"""NFLOG monitor + store + report against real netfilter, in throwaway namespaces (root)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest

from sentinel.evidence.report import GAP_FACTOR
from sentinel.lab.netns import PYTHON
from tests.conftest import wait_for as _wait_for

pytestmark = pytest.mark.netns

PINS = ("--pin", "postgres=198.18.0.2", "--pin", "neo4j=198.18.0.3", "--pin", "ollama=198.18.0.4")
OUT4, OUT6 = "198.18.5.5", "2001:db8::5"

# Runs inside the app namespace: each attempt from its own socket (its own source port / ICMP id).
ATTEMPTS = r"""
import json, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
out = []
for i, a in enumerate(json.loads(sys.argv[1])):
    fam = socket.AF_INET6 if ":" in a["dst"] else socket.AF_INET
    t = time.time()
    if a["proto"] == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(a.get("timeout", 1.0))
        try: s.connect((a["dst"], a["port"]))
        except OSError: pass
    elif a["proto"] == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        for _ in range(a.get("count", 1)):
            try: s.sendto(b"x", (a["dst"], a["port"]))
            except OSError: pass  # EPERM: rejected on the way out
            time.sleep(0.05)
    else:
        proto = socket.IPPROTO_ICMPV6 if fam == socket.AF_INET6 else socket.IPPROTO_ICMP
        s = socket.socket(fam, socket.SOCK_RAW, proto)
        kind = 128 if fam == socket.AF_INET6 else 8
        msg = struct.pack("!BBHHH", kind, 0, 0, 4000 + i, 1) + b"ping"
        if fam == socket.AF_INET:
            msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
        try: s.sendto(msg, (a["dst"], 0))
        except OSError: pass
    out.append({"t": t, "sport": s.getsockname()[1] if a["proto"] != "icmp" else None})
    s.close()
print(json.dumps(out))
"""

SCRIPTED = [
    {"proto": "tcp", "dst": OUT4, "port": 443},
    {"proto": "udp", "dst": OUT4, "port": 5353},
    {"proto": "tcp", "dst": OUT6, "port": 443},
    {"proto": "udp", "dst": OUT6, "port": 8443},
    {"proto": "icmp", "dst": OUT4},
    {"proto": "icmp", "dst": OUT6},
    {"proto": "tcp", "dst": "198.18.0.2", "port": 22},  # allowlisted host, wrong port
]


def attempt(topo, attempts) -> list[dict]:
    out = topo.run("app", PYTHON, "-c", ATTEMPTS, json.dumps(attempts), timeout=60)
    return json.loads(out.stdout)


def start_monitor(topo, policy, *extra: str):
    proc = topo.spawn(
        "app",
        PYTHON,
        "-m",
        "sentinel.detect.nflog",
        "--policy",
        policy,
        "--heartbeat",
        "0.5",
        "--snapshot-every",
        "0.5",
        "--seconds",
        "300",
        *extra,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc, time.time()


def stop(proc) -> None:
    proc.terminate()
    proc.communicate(timeout=15)


def stored(state_dir, layer="netfilter") -> list[tuple]:
    db = state_dir / "events.db"
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT protocol, family, dst_ip, dst_port, packets, verdict FROM events "
            "WHERE layer = ? ORDER BY ts",
            (layer,),
        ).fetchall()


wait_for = partial(_wait_for, timeout=15.0)  # this file's deadline


def _details(state_dir, kind: str) -> list[tuple[float, dict]]:
    with sqlite3.connect(state_dir / "events.db") as conn:
        rows = conn.execute("SELECT ts, detail FROM events WHERE kind = ? ORDER BY ts", (kind,))
        return [(ts, json.loads(detail or "{}")) for ts, detail in rows.fetchall()]


def wait_past_gap(state_dir) -> None:
    """Until the last stored monitor heartbeat is older than the report's gap threshold."""
    ts, detail = _details(state_dir, "monitor_heartbeat")[-1]
    threshold = GAP_FACTOR * float(detail["interval"])
    assert wait_for(lambda: time.time() - ts > threshold + 0.1, timeout=threshold + 10)


def postgres_packets_in_a_reading(state_dir) -> int:
    readings = _details(state_dir, "kernel_counters")
    return max(
        (pb[0] for _ts, d in readings for e, pb in d.get("sets", {}).items() if ":5432" in e),
        default=0,
    )


def report(topo, *args) -> tuple[int, dict | str]:
    done = topo.sentinel("report", *args)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        return done.returncode, done.stdout + done.stderr


def packets_stored(state_dir) -> int:
    return sum(row[4] for row in stored(state_dir))


def test_enforce_every_attempt_one_event_and_evidence(topo, state_dir, tmp_path):
    assert topo.sentinel("apply", "--policy", "policies/mem0.yaml", *PINS).returncode == 0
    proc, since = start_monitor(topo, "policies/mem0.yaml")
    attempt(topo, SCRIPTED)
    # retransmitted UDP datagrams of one flow: one attempt, three packets
    attempt(topo, [{"proto": "udp", "dst": OUT4, "port": 9, "count": 3}])
    n = len(SCRIPTED) + 1
    assert wait_for(lambda: len(stored(state_dir)) >= n and packets_stored(state_dir) >= n + 2)
    rows = stored(state_dir)
    assert len(rows) == n
    assert {(r[0], r[2], r[3]) for r in rows} == {
        ("tcp", OUT4, 443),
        ("udp", OUT4, 5353),
        ("tcp", OUT6, 443),
        ("udp", OUT6, 8443),
        ("icmp", OUT4, None),
        ("icmpv6", OUT6, None),
        ("tcp", "198.18.0.2", 22),
        ("udp", OUT4, 9),
    }
    assert [r[4] for r in rows if r[3] == 9] == [3]
    assert {r[5] for r in rows} == {"blocked"}
    assert topo.outside_packets() == 0

    # plant secrets where the bundle collects logs and events
    (state_dir / "logs").mkdir()
    (state_dir / "logs" / "sentinel.log").write_text(
        '{"event": "alert", "password": "hunter2-hunter2", "to": "alice@example.com"}\n'
        "api_key=sk-abcdefghijklmnopqrstuvwx call +1 415 555 0199 now\n"
    )
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"app": {"p99_ms": 30}}))
    code, data = report(
        topo, "--since", str(since), "--results", str(results), "--bundle", str(tmp_path / "b")
    )
    assert code == 0, data
    assert data["blocked_attempts_last_10m"] == n and data["external_calls_last_10m"] == 0
    assert data["attempts_by_layer"] == {"netfilter": n}
    assert data["rules_in_sync"] and data["mode"] == "enforce"
    assert data["coverage"] == "complete", data["coverage_detail"]
    assert data["unaccounted_packets"] == 0
    families = data["completeness"]["families"]
    assert families["ipv4"]["kernel"] == families["ipv4"]["stored"] == 7  # 5 + 2 folded
    assert families["ipv6"]["kernel"] == families["ipv6"]["stored"] == 3
    merged = json.loads(results.read_text())
    assert merged["app"] == {"p99_ms": 30}
    assert merged["sentinel"]["external_calls_last_10m"] == 0

    bundle = tmp_path / "b"
    check = subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=bundle, capture_output=True)
    assert check.returncode == 0, check.stdout
    names = set(os.listdir(bundle))
    assert {
        "report.json",
        "iptables-save-v4.txt",
        "iptables-save-v6.txt",
        "ipset-save.txt",
        "nft-netdev.txt",
        "flows.jsonl",
        "policy.yaml",
        "logs",
    } <= names
    assert "SENTINEL-DENY" in (bundle / "iptables-save-v6.txt").read_text()
    policy_bytes = (bundle / "policy.yaml").read_bytes()  # verbatim: its hash checks
    assert hashlib.sha256(policy_bytes).hexdigest() == data["policy_sha256"]
    assert len((bundle / "flows.jsonl").read_text().splitlines()) == n
    everything = "".join(p.read_text() for p in bundle.rglob("*") if p.is_file())
    for secret in ("hunter2-hunter2", "alice@example.com", "sk-abcdefghijklmnop", "555 0199"):
        assert secret not in everything
    assert "[REDACTED]" in (bundle / "logs" / "sentinel.log").read_text()

    table = topo.sentinel("report", "--since", str(since), "--format", "table")
    assert table.returncode == 0 and "coverage" in table.stdout and "complete" in table.stdout
    bad = topo.sentinel("report", "--last", "-3m")
    assert bad.returncode == 2 and "--last" in bad.stderr
    stop(proc)


def test_audit_external_calls_and_syn_retransmits_fold(topo, state_dir, tmp_path):
    # the outside host ignores port 9, so the app's kernel retransmits the SYN
    topo.run("outside", "iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP")
    policy = tmp_path / "audit.yaml"
    policy.write_text(open("policies/mem0-audit.yaml").read() + "monitor: {metrics_port: 9464}\n")
    assert topo.sentinel("apply", "--policy", str(policy), *PINS).returncode == 0
    proc, since = start_monitor(topo, str(policy))
    attempt(topo, SCRIPTED[:6])
    attempt(topo, [{"proto": "tcp", "dst": OUT4, "port": 9, "timeout": 1.6}])  # SYN at 0 s, 1 s
    n = 7
    assert wait_for(lambda: [r for r in stored(state_dir) if r[3] == 9 and r[4] >= 2])
    rows = stored(state_dir)
    assert len(rows) == n and {r[5] for r in rows} == {"audited"}
    assert [r[4] for r in rows if r[3] == 9] == [2]
    assert topo.outside_packets() > 0  # audit lets them out: that is what the report must say
    code, data = report(topo, "--since", str(since))
    assert code == 1  # external calls fail the gate
    assert data["external_calls_last_10m"] == n and data["blocked_attempts_last_10m"] == 0
    assert data["unaccounted_packets"] == 0 and data["coverage"] == "complete"
    scrape = topo.run("app", "curl", "-sf", "http://127.0.0.1:9464/metrics").stdout
    assert (
        'sentinel_blocked_attempts_total{layer="netfilter",protocol="tcp",verdict="audited"} 3.0'
        in scrape
    )
    assert "198.18" not in scrape and "2001:db8" not in scrape
    stop(proc)


def test_sigkill_and_restart_still_accounts_for_attempts(topo, state_dir):
    assert topo.sentinel("apply", "--policy", "policies/mem0.yaml", *PINS).returncode == 0
    proc, since = start_monitor(topo, "policies/mem0.yaml")
    attempt(topo, SCRIPTED[:2])
    assert wait_for(lambda: len(stored(state_dir)) == 2)
    proc.kill()
    proc.wait(timeout=10)
    attempt(topo, SCRIPTED[2:5])  # nobody is listening
    wait_past_gap(state_dir)  # the missing heartbeats are a gap by the report's own rule
    proc, _ = start_monitor(topo, "policies/mem0.yaml")
    attempt(topo, SCRIPTED[5:6])
    assert wait_for(lambda: len(stored(state_dir)) == 3)
    code, data = report(topo, "--since", str(since))
    assert code == 0
    assert data["unaccounted_packets"] == 3
    # made while it was down: TCP and UDP over IPv6, ICMP over IPv4
    assert data["completeness"]["families"]["ipv6"]["unaccounted"] == 2
    assert data["completeness"]["families"]["ipv4"]["unaccounted"] == 1
    assert data["coverage"] == "partial"
    assert data["coverage_detail"]["monitor_gaps"], data["coverage_detail"]
    assert topo.outside_packets() == 0
    stop(proc)


def test_netflow_counts_across_a_reapply(topo, state_dir, tmp_path):
    """An identical re-apply keeps the counters; a real one (new rules) zeroes the set
    counters, and the report still counts the whole window."""
    assert topo.sentinel("apply", "--policy", "policies/mem0.yaml", *PINS).returncode == 0
    proc, since = start_monitor(topo, "policies/mem0.yaml")
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    # at least one kernel reading holds the first connection's packets
    assert wait_for(lambda: postgres_packets_in_a_reading(state_dir) > 0)
    code, first = report(topo, "--since", str(since))
    before = next(r for r in first["netflow"] if r["upstream"] == "postgres")
    assert before["packets"] == before["packets_since_apply"] > 0
    assert topo.sentinel("apply", "--policy", "policies/mem0.yaml", *PINS).returncode == 0
    code, same = report(topo, "--since", str(since))
    kept = next(r for r in same["netflow"] if r["upstream"] == "postgres")
    assert kept["packets_since_apply"] == before["packets"]  # identical rules: nothing reset
    changed = tmp_path / "mem0-other-mark.yaml"  # other rules: a full apply, counters zeroed
    changed.write_text(
        Path("policies/mem0.yaml").read_text().replace("version: 1", "version: 1\nmark: 0x5e46", 1)
    )
    assert topo.sentinel("apply", "--policy", str(changed), *PINS).returncode == 0
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    code, data = report(topo, "--since", str(since))
    after = next(r for r in data["netflow"] if r["upstream"] == "postgres")
    assert after["packets_since_apply"] == before["packets"]  # same exchange, counters reset
    assert after["packets"] == 2 * before["packets"]  # the window saw both connections
    assert data["coverage_detail"]["window_counters"]["exact"]
    stop(proc)
