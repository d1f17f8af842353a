"""Issue 13, items 4 and 11, against a real `sentinel run`: open TCP and UDP flows must not
outlive a tighter policy (hot reload removing the entry, audit -> enforce, flows opened before
the sentinel started), and a reload that changes `nflog_group` is refused so the monitor is
never blinded. Ground truth: the far end's own count of what arrived (flowsink.py) and the
outside host's INPUT counters. See docs/hardening.md."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from sentinel.lab.netns import HELPERS, PYTHON, Topology
from tests.conftest import (
    ONLY_OLLAMA,
    RECORDS,
    RunningSentinel,
    editor_save,
    policy_text,
    report,
    status_json,
    wait_for,
)

pytestmark = pytest.mark.netns
OUTSIDE, PORT = "198.18.5.5", 8443

FLOWS = r"""
import json, socket, sys, time
host, port, seconds, protos = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
socks = {}
if "tcp" in protos:
    socks["tcp"] = socket.create_connection((host, port), timeout=3)
if "udp" in protos:
    socks["udp"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    socks["udp"].connect((host, port))
for s in socks.values():
    s.settimeout(0.5)
print("connected", flush=True)
ok, errors = {k: 0 for k in socks}, {k: None for k in socks}
end = time.monotonic() + seconds
while time.monotonic() < end:
    for kind, s in socks.items():
        if kind == "tcp" and errors["tcp"]:
            continue  # a reset connection stays dead
        try:
            s.send(b"x" * 16)
            s.recv(16)
            ok[kind] += 1
        except OSError as exc:
            errors[kind] = type(exc).__name__
    time.sleep(0.1)
print(json.dumps({"ok": ok, "errors": errors}), flush=True)
"""


class Sink:
    """flowsink.py in one namespace: what arrived at the far end."""

    def __init__(self, topo: Topology, host: str, port: int, tmp_path: Path) -> None:
        self.out = tmp_path / f"sink-{host}-{port}.json"
        proc = topo.spawn(
            host, PYTHON, str(HELPERS / "flowsink.py"), str(port), "--out", str(self.out)
        )
        assert proc.stdout.readline().strip() == "ready"

    def counts(self) -> dict:
        return json.loads(self.out.read_text())

    def arrived(self) -> int:
        c = self.counts()
        return c["tcp_chunks"] + c["udp_datagrams"]


def flows(topo: Topology, host: str, port: int, protos: str = "tcp,udp") -> subprocess.Popen:
    proc = topo.spawn("app", PYTHON, "-c", FLOWS, host, str(port), "25", protos)
    assert proc.stdout.readline().strip() == "connected", proc.stderr.read()
    return proc


def flowing(sink: Sink, kinds: tuple[str, ...] = ("tcp_chunks", "udp_datagrams")) -> None:
    before = sink.counts()
    grew = wait_for(lambda: all(sink.counts()[k] >= before[k] + 5 for k in kinds), 10)
    assert grew, sink.counts()


def stopped(sink: Sink, topo: Topology | None = None) -> dict:
    """Nothing more arrives at the far end (nor at the outside host): checked 2 s apart."""
    time.sleep(1)  # the tightening has taken effect; what was in flight has landed
    first, packets = sink.counts(), topo.outside_packets() if topo else None
    time.sleep(2)
    assert sink.counts() == first, (first, sink.counts())
    if topo:
        assert topo.outside_packets() == packets
    return first


def blocked_flows(s: RunningSentinel, dst: str, port: int, since: float) -> set[str]:
    return {
        e["protocol"]
        for e in s.events("egress_attempt", dst_ip=dst, dst_port=port, verdict="blocked")
        if e["ts"] >= since
    }


def start(topo: Topology, tmp_path: Path, text: str) -> RunningSentinel:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return RunningSentinel(topo, path)


@pytest.fixture
def upstream(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    return topo


def test_reload_that_removes_an_entry_stops_its_open_flow(upstream, tmp_path):
    topo = upstream
    s = start(topo, tmp_path, policy_text())  # postgres: tcp 5432, 5433
    sink = Sink(topo, "postgres", 5433, tmp_path)
    client = flows(topo, "198.18.0.2", 5433, "tcp")
    flowing(sink, ("tcp_chunks",))
    changed = time.time()
    editor_save(tmp_path / "policy.yaml", ONLY_OLLAMA)
    s.wait_event("policy_reloaded")
    stopped(sink)
    client.kill()
    assert wait_for(lambda: blocked_flows(s, "198.18.0.2", 5433, changed) == {"tcp"}, 10), s.log()


AUDIT = policy_text().replace("mode: enforce", "mode: audit")


def test_audit_to_enforce_stops_open_tcp_and_udp_flows_and_counts_them(upstream, tmp_path):
    topo = upstream
    sink = Sink(topo, "outside", PORT, tmp_path)
    s = start(topo, tmp_path, AUDIT)
    since = time.time() - 1
    client = flows(topo, OUTSIDE, PORT)
    flowing(sink)  # audit: logged, let through
    assert topo.outside_packets() > 0
    switched = time.time()
    editor_save(tmp_path / "policy.yaml", policy_text())
    s.wait_event("policy_reloaded")
    stopped(sink, topo)
    out = json.loads(client.communicate(timeout=40)[0].strip().splitlines()[-1])
    assert out["errors"]["tcp"] and out["errors"]["udp"], out
    assert wait_for(lambda: blocked_flows(s, OUTSIDE, PORT, switched) == {"tcp", "udp"}, 10)
    # every logged packet is stored once the flows go quiet (their folded counts land)
    r = wait_for(lambda: (x := report(topo, since))["unaccounted_packets"] == 0 and x, 15)
    assert r and r["coverage"] == "complete" and r["blocked_attempts"] >= 2, r


def test_flows_opened_before_the_sentinel_started_stop_when_it_does(upstream, tmp_path):
    topo = upstream
    sink = Sink(topo, "outside", PORT, tmp_path)
    # conntrack already in use in the app's namespace, as Docker's DNAT for its resolver does
    dnat = ("-d", "127.0.0.11/32", "-p", "udp", "--dport", "53", "-j", "DNAT")
    topo.run("app", "iptables-nft", "-t", "nat", "-A", "OUTPUT", *dnat, "--to", "127.0.0.11:53053")
    client = flows(topo, OUTSIDE, PORT)  # conntrack holds both flows as established
    flowing(sink)
    started = time.time()
    s = start(topo, tmp_path, policy_text())
    stopped(sink, topo)
    client.kill()
    assert wait_for(lambda: blocked_flows(s, OUTSIDE, PORT, started) == {"tcp", "udp"}, 10)


def test_reload_changing_nflog_group_is_refused_and_the_monitor_still_sees(upstream, tmp_path):
    topo = upstream
    s = start(topo, tmp_path, policy_text())
    before = status_json(topo)["ruleset_sha256_kernel"]
    editor_save(tmp_path / "policy.yaml", policy_text() + "nflog_group: 7\n")
    rejected = s.wait_event("reload_rejected")
    assert "nflog_group cannot change on reload (1 -> 7)" in rejected["detail"]["error"]
    assert "restart" in rejected["detail"]["error"]
    assert status_json(topo)["ruleset_sha256_kernel"] == before
    # attempts after the refused reload are still seen by the monitor
    assert not topo.probe("tcp", OUTSIDE, 443)["ok"]
    s.wait_event("egress_attempt", dst_ip=OUTSIDE, dst_port=443)
    assert topo.outside_packets() == 0


STREAM = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # one flow: one source port
print("sending", flush=True)
end = time.monotonic() + seconds
for _ in range(100_000):  # bounded in count and time
    if time.monotonic() >= end:
        break
    try:
        s.sendto(b"x", (host, port))
    except OSError:
        pass
    time.sleep(0.003)
"""


def assert_accounted_whole(topo, since: float) -> None:
    """Once the flow is quiet, every NFLOG packet the kernel counted is stored: exactly, more
    than 100 of them, coverage complete."""
    r = wait_for(lambda: (x := report(topo, since))["unaccounted_packets"] == 0 and x, 15)
    assert r, {
        k: v for k, v in report(topo, since).items() if k in ("unaccounted_packets", "problems")
    }
    families = r["completeness"]["families"]
    assert families["ipv4"]["kernel"] == families["ipv4"]["stored"] > 100, families  # exact
    assert r["coverage"] == "complete", r


def test_a_flow_sending_through_the_switch_to_enforce_is_accounted_for_whole(upstream, tmp_path):
    # A datagram every 3 ms while the reload applies: the new rules (their NFLOG counter starts
    # at 0) log some before the apply has finished and recorded its time. Their attempt (its
    # first packet's time) is one of the packets the counter counts, so the report must not
    # call the folded flow's packets unaccounted once it is quiet.
    topo = upstream
    s = start(topo, tmp_path, AUDIT)
    since = time.time() - 1
    sender = topo.spawn("app", PYTHON, "-c", STREAM, OUTSIDE, str(PORT + 1), "6")
    assert sender.stdout.readline().strip() == "sending"
    s.wait_event("egress_attempt", dst_ip=OUTSIDE, dst_port=PORT + 1, verdict="audited")
    switched = time.time()
    editor_save(tmp_path / "policy.yaml", policy_text())
    s.wait_event("policy_reloaded")
    assert sender.wait(timeout=30) == 0
    assert wait_for(lambda: blocked_flows(s, OUTSIDE, PORT + 1, switched) == {"udp"}, 10)
    assert_accounted_whole(topo, since)


@pytest.mark.xfail(
    strict=True,
    reason="known, not fixed (review5): a flow open across a full apply keeps its first "
    "packet's time, before applied_at, while the new counters count its later packets "
    "(docs/report.md, Limitations)",
)
def test_a_blocked_flow_through_a_reload_that_replaces_the_rules_is_accounted_for(
    upstream, tmp_path
):
    # Same verdict before and after (enforce -> enforce), new rules (the resolver's port moves:
    # the nat rules change), so the NFLOG counters restart mid-flow: the packets after it are
    # a new attempt of their own, not folded into the one that started before the apply.
    topo = upstream
    s = start(topo, tmp_path, policy_text())
    since = time.time() - 1
    sender = topo.spawn("app", PYTHON, "-c", STREAM, OUTSIDE, str(PORT + 2), "6")
    assert sender.stdout.readline().strip() == "sending"
    s.wait_event("egress_attempt", dst_ip=OUTSIDE, dst_port=PORT + 2, verdict="blocked")
    editor_save(tmp_path / "policy.yaml", policy_text().replace("5300", "5301"))
    s.wait_event("policy_reloaded")
    assert sender.wait(timeout=30) == 0
    assert_accounted_whole(topo, since)
