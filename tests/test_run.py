"""`sentinel run` in the app namespace with a real test DNS server upstream: pinning, refusal,
redirect, pin moves, upstream down, hot reload (rename and symlink swap), tamper, SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON
from tests.conftest import (
    ONLY_OLLAMA,
    RECORDS,
    RunningSentinel,
    configmap_mount,
    configmap_update,
    editor_save,
    policy_text,
    query,
    start,
    status_json,
    wait_for,
)

# --- tests ------------------------------------------------------------------------------
pytestmark = pytest.mark.netns


def test_allowlisted_names_resolve_through_the_sentinel_and_connect(upstream, tmp_path):
    topo = upstream
    s = start(topo, tmp_path, min_ttl="30s")
    assert query(topo, "postgres")["addresses"] == ["198.18.0.2"]
    assert query(topo, "postgres", "AAAA")["addresses"] == ["2001:db8::2"]
    assert query(topo, "ollama")["addresses"] == ["198.18.0.4"]
    # a CNAME chain is flattened onto the asked name, and the target address is pinned for it
    cname = query(topo, "cache.internal")
    assert cname["addresses"] == ["198.18.0.2"] and cname["rcode"] == "NOERROR"
    assert 1 <= cname["ttl"] <= 30  # upstream TTL 1 s clamped up to min_ttl
    for address, port in (("198.18.0.2", 5432), ("2001:db8::2", 5432), ("198.18.0.4", 11434)):
        assert topo.probe("tcp", address, port)["ok"], address
    assert not topo.probe("tcp", "198.18.0.2", 11434)["ok"]  # pinned, but not that port
    assert topo.outside_packets() == 0
    assert s.stop() == 0


def test_external_names_are_refused_and_recorded(upstream, tmp_path):
    topo = upstream
    s = start(topo, tmp_path)
    assert query(topo, "api.openai.com")["rcode"] == "REFUSED"
    assert query(topo, "telemetry.example.com", "AAAA")["rcode"] == "REFUSED"
    event = s.wait_event("egress_attempt", dst_name="api.openai.com")
    assert event["layer"] == "dns" and event["protocol"] == "dns"
    assert event["verdict"] == "blocked"
    assert event["detail"]["qtype"] == "A" and isinstance(event["detail"]["src_port"], int)
    assert event["cid"] == event["event_id"]  # the log line carries the event's correlation id
    assert s.wait_event("egress_attempt", dst_name="telemetry.example.com")["detail"]["qtype"] == (
        "AAAA"
    )
    assert not topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert topo.outside_packets() == 0


def test_every_port_53_query_lands_on_the_sentinel_udp_and_tcp(upstream, tmp_path):
    topo = upstream
    start(topo, tmp_path)
    # straight to the upstream's own address, to the "outside" host, over IPv6, over TCP:
    # a refusal for a name the upstream would answer proves the sentinel answered
    for server, tcp in (
        ("198.18.0.53", False),
        ("198.18.0.53", True),
        ("198.18.5.5", False),
        ("198.18.5.5", True),
        ("2001:db8::5", False),
        ("2001:db8::53", True),
    ):
        assert query(topo, "api.openai.com", server=server, tcp=tcp)["rcode"] == "REFUSED", server
        got = query(topo, "postgres", server=server, tcp=tcp)
        assert got["addresses"] == ["198.18.0.2"], (server, tcp, got)
    assert topo.outside_packets() == 0


def test_pin_moves_and_an_open_connection_to_the_old_address_survives(upstream, tmp_path):
    topo = upstream
    s = start(topo, tmp_path, min_ttl="1s", grace="4s")
    assert query(topo, "postgres")["addresses"] == ["198.18.0.2"]
    echo = topo.spawn("postgres", PYTHON, "-c", ECHO, "5433")
    assert echo.stdout.readline().strip() == "ready"
    held = topo.spawn("app", PYTHON, "-c", HOLD, "198.18.0.2", "5433", stdin=subprocess.PIPE)
    assert held.stdout.readline().strip() == "echo before"
    moved = {**RECORDS, "postgres": {"A": ["198.18.0.99"], "AAAA": ["2001:db8::99"]}}
    topo.set_dns_records(moved, ttl=1)
    event = s.wait_event("pin_changed", dst_name="postgres", timeout=10)
    assert wait_for(lambda: query(topo, "postgres")["addresses"] == ["198.18.0.99"], 10)
    changed = [e for e in s.events("pin_changed", dst_name="postgres") if e["detail"]["removed"]]
    assert changed and changed[0]["detail"]["removed"] == ["198.18.0.2", "2001:db8::2"], event
    assert topo.probe("tcp", "198.18.0.99", 5432)["ok"]  # the new address is allowed
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]  # the old one still, within the grace
    # after the grace, new connections to the old address are refused...
    assert wait_for(lambda: not topo.probe("tcp", "198.18.0.2", 5432)["ok"], 10)
    # ...but the connection opened before the move still carries traffic both ways
    held.stdin.write("go\n")
    held.stdin.flush()
    assert held.stdout.readline().strip() == "echo after"


HOLD = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"before"); print("echo", s.recv(64).decode(), flush=True)
sys.stdin.readline()
try:
    s.sendall(b"after"); print("echo", s.recv(64).decode(), flush=True)
except OSError as exc:
    print("broken", type(exc).__name__, flush=True)
"""

ECHO = """
import socket, sys, time
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
srv.settimeout(30)
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout(30)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    data = conn.recv(64)
    if not data:
        break
    conn.sendall(data)
"""


def test_upstream_down_serves_stale_pins_then_fails_closed(upstream, tmp_path):
    topo = upstream
    # grace 6 s: the upstream timeout (2 s) passes before the pin is even known to be stale
    s = start(topo, tmp_path, min_ttl="1s", grace="6s")
    assert query(topo, "postgres")["addresses"] == ["198.18.0.2"]
    topo.stop_dns_server()
    s.wait_event("dns_upstream_failing", dst_name="postgres", timeout=10)
    s.wait_event("stale_pins", dst_name="postgres", timeout=10)
    stale = query(topo, "postgres")
    assert stale["addresses"] == ["198.18.0.2"], stale  # last good answer, within grace
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    s.wait_event("pins_expired", dst_name="postgres", timeout=10)
    assert query(topo, "postgres")["rcode"] == "SERVFAIL"  # fail closed
    assert not topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    assert topo.outside_packets() == 0


def test_reload_after_write_and_rename_keeps_old_rules_on_invalid_policy(upstream, tmp_path):
    topo = upstream
    s = start(topo, tmp_path)
    policy = tmp_path / "policy.yaml"
    before = status_json(topo)["ruleset_sha256_kernel"]
    editor_save(policy, "version: 1\nallow:\n  - {name: x, host: postgres, ports: [70000]}\n")
    rejected = s.wait_event("reload_rejected")
    assert "allow[0].ports[0]: 70000 is not a port" in rejected["detail"]["error"]
    assert status_json(topo)["ruleset_sha256_kernel"] == before
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]  # old rules still in force
    editor_save(policy, ONLY_OLLAMA)
    s.wait_event("policy_reloaded")
    status = status_json(topo)
    assert status["in_sync"] and status["ruleset_sha256_kernel"] != before
    assert not topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    assert topo.probe("tcp", "198.18.0.4", 11434)["ok"]
    assert query(topo, "postgres")["rcode"] == "REFUSED"  # no longer allowlisted


def test_reload_through_a_kubernetes_configmap_symlink_swap(upstream, tmp_path):
    topo = upstream
    mount = tmp_path / "config"
    s = RunningSentinel(topo, configmap_mount(mount, policy_text()))
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    configmap_update(mount, "..v2", "version: 1\nmode: sideways\n")
    assert "mode: 'sideways' is not one of" in s.wait_event("reload_rejected")["detail"]["error"]
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    configmap_update(mount, "..v3", ONLY_OLLAMA)
    s.wait_event("policy_reloaded")
    assert not topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    assert topo.probe("tcp", "198.18.0.4", 11434)["ok"]


@pytest.mark.parametrize(
    "tamper",
    [
        ("iptables-nft", "-F", "SENTINEL-OUT"),
        ("iptables-nft", "-I", "SENTINEL-OUT", "1", "-j", "ACCEPT"),
        ("ipset", "add", "sentinel-allow4", "198.18.5.5,tcp:443"),
        ("iptables-nft", "-t", "nat", "-F", "SENTINEL-DNS"),
        ("ip6tables-nft", "-D", "OUTPUT", "-j", "SENTINEL-OUT"),
    ],
    ids=["flush", "insert-accept", "set-entry", "nat-dns-flush", "v6-hook-removed"],
)
def test_tamper_is_detected_and_repaired_within_the_interval(upstream, tmp_path, tamper):
    topo = upstream
    s = start(topo, tmp_path, tamper="1s")
    topo.run("app", *tamper)
    tampered = time.monotonic()
    event = s.wait_event("tamper", timeout=5)
    assert time.monotonic() - tampered < 3.0  # interval 1 s (+ the check's own time)
    assert event["layer"] == "tamper" and event["detail"]["repaired"] is True
    assert event["detail"]["expected"] != event["detail"]["found"]
    assert wait_for(lambda: status_json(topo)["in_sync"], 5)
    assert not topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]


def test_sigterm_leaves_the_deny_and_teardown_on_exit_removes_it(upstream, tmp_path):
    topo = upstream
    s = start(topo, tmp_path)
    assert s.stop() == 0
    assert s.find("stopped")
    assert not topo.probe("tcp", "198.18.5.5", 443)["ok"]  # deny still in place
    assert query(topo, "postgres")["rcode"] == "ERROR"  # no resolver: DNS fails closed too
    s = start(topo, tmp_path, "--teardown-on-exit")
    assert s.stop() == 0
    assert topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert "SENTINEL" not in topo.run("app", "iptables-nft-save").stdout


def test_mem0_policy_as_shipped(upstream, tmp_path):
    topo = upstream
    started = time.monotonic()  # every pin is born after this
    s = RunningSentinel(topo, Path(__file__).parent.parent / "policies" / "mem0.yaml")
    for name, address, port in (
        ("postgres", "198.18.0.2", 5432),
        ("neo4j", "198.18.0.3", 7687),
        ("ollama", "198.18.0.4", 11434),
    ):
        got = query(topo, name)
        # the upstream says 1 s; min_ttl 30s clamps it: what is left of 30 s since the pin
        # was born (the answer counts down), never more than 30
        least = 30 - (time.monotonic() - started) - 1
        assert got["addresses"] == [address] and least <= got["ttl"] <= 30, (got, least)
        assert topo.probe("tcp", address, port)["ok"], name
    assert query(topo, "api.openai.com")["rcode"] == "REFUSED"
    s.wait_event("egress_attempt", dst_name="api.openai.com")
    assert not topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert topo.outside_packets() == 0
    assert status_json(topo)["in_sync"]
    assert s.stop() == 0


def test_invalid_policy_at_start_exits_2_with_the_message(topo, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nallow:\n  - {name: pg, host: postgres, ports: [0]}\n")
    out = topo.sentinel("run", "--policy", str(bad))
    assert out.returncode == 2, out
    assert "bad.yaml:3: allow[0].ports[0]: 0 is not a port" in out.stderr
    assert "SENTINEL" not in topo.run("app", "iptables-nft-save").stdout  # nothing applied


def test_ready_file_says_everything_is_up_and_goes_away_on_stop(upstream, tmp_path):
    topo = upstream
    ready = tmp_path / "ready"
    s = start(topo, tmp_path, "--ready-file", str(ready))
    assert wait_for(ready.exists, 15), s.log()
    app_netns = topo.run("app", "readlink", "/proc/self/ns/net").stdout.strip()
    assert ready.read_text().strip() == app_netns  # the compose gate compares exactly this
    daemon = json.loads((Path(os.environ["SENTINEL_STATE_DIR"]) / "daemon.json").read_text())
    assert daemon["ready"] is True
    assert daemon["services"] == sorted(
        ["store", "monitor", "capture_feed", "guard", "alerts", "canary", "metrics"]
    )
    assert (Path(os.environ["SENTINEL_STATE_DIR"]) / "guard" / "allowlist.json").exists()
    assert s.stop() == 0
    assert not ready.exists()
