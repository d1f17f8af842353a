"""Deny-all egress in a real namespace with real netfilter (root; never the root namespace)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns
MEM0 = "policies/mem0.yaml"
AUDIT = "policies/mem0-audit.yaml"


def apply(topo, policy=MEM0, *extra):
    result = topo.sentinel("apply", "--policy", str(policy), *extra)
    assert result.returncode == 0, result.stderr
    return result


def save(topo, tool="iptables-nft-save"):
    text = topo.run("app", tool).stdout
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def nflog_packets(topo):
    text = (
        topo.run("app", "iptables-nft-save", "-c").stdout
        + topo.run("app", "ip6tables-nft-save", "-c").stdout
    )
    return sum(
        int(m.group(1))
        for m in re.finditer(r"^\[(\d+):\d+\] -A SENTINEL-DENY -j NFLOG", text, re.M)
    )


def test_allowed_upstreams_connect_by_name_and_address(topo):
    apply(topo)
    for host, port in (
        ("postgres", 5432),
        ("neo4j", 7474),
        ("neo4j", 7687),
        ("ollama", 11434),
        ("198.18.0.2", 5432),
        ("2001:db8::4", 11434),
    ):
        result = topo.probe("tcp", host, port)
        assert result["ok"], (host, port, result)
    assert topo.outside_packets() == 0


def test_blocked_connect_fails_fast_and_nothing_reaches_outside(topo):
    apply(topo)
    tcp4 = topo.probe("tcp", "198.18.5.5", 443)
    assert tcp4["error"].startswith("ConnectionRefusedError"), tcp4
    assert tcp4["elapsed"] < 0.1, "REJECT must fail fast, not hang"
    blocked = [
        ("tcp", "2001:db8::5", 443),  # outside by IPv6
        ("udp", "198.18.5.5", 443),  # UDP (QUIC-like) to outside
        ("tcp", "198.18.5.5", 5432),  # non-allowlisted ip, allowlisted port
        ("tcp", "198.18.0.99", 11434),  # ... the outside host's other address
        ("tcp", "198.18.0.2", 11434),  # allowlisted ip, non-allowlisted port
        ("udp", "198.18.0.2", 5432),  # allowlisted ip and port, wrong protocol
    ]
    before = nflog_packets(topo)
    for proto, host, port in blocked:
        result = topo.probe(proto, host, port, timeout=0.5)
        assert not result["ok"], (proto, host, port, result)
    assert nflog_packets(topo) - before >= len(blocked), "every attempt hits the NFLOG rule"
    assert topo.outside_packets() == 0


def test_audit_mode_lets_traffic_through_but_logs_every_attempt(topo):
    apply(topo, AUDIT)
    before = nflog_packets(topo)
    assert topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert topo.probe("tcp", "2001:db8::5", 443)["ok"]
    assert topo.probe("tcp", "postgres", 5432)["ok"]
    assert nflog_packets(topo) - before == 2  # the two SYNs to outside, not postgres
    assert topo.outside_packets() > 0


def test_reapply_is_idempotent_and_status_matches(topo):
    apply(topo)
    first = save(topo)
    apply(topo)
    second = save(topo)
    assert first == second
    assert second.count("-A OUTPUT -j SENTINEL-OUT") == 1
    assert second.count("-A OUTPUT -j SENTINEL-DNS") == 1
    status = topo.sentinel("status", "--format", "json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["in_sync"] and data["ruleset_sha256_kernel"] == data["ruleset_sha256_expected"]


def test_status_detects_drift(topo):
    apply(topo)
    topo.run("app", "iptables-nft", "-I", "SENTINEL-OUT", "1", "-j", "ACCEPT")
    status = topo.sentinel("status", "--format", "json")
    assert status.returncode == 1
    assert json.loads(status.stdout)["in_sync"] is False
    topo.run("app", "iptables-nft", "-D", "SENTINEL-OUT", "1")
    topo.run("app", "iptables-nft", "-I", "OUTPUT", "1", "-j", "ACCEPT")  # hook no longer first
    assert topo.sentinel("status").returncode == 1


def test_teardown_leaves_tables_exactly_as_before(topo):
    # someone else's rules, like Docker's, must survive untouched
    topo.run("app", "iptables-nft", "-A", "OUTPUT", "-d", "198.18.0.7", "-j", "ACCEPT")
    topo.run("app", "iptables-nft", "-t", "nat", "-A", "OUTPUT", "-d", "198.18.0.8", "-j", "RETURN")
    topo.run("app", "ip6tables-nft", "-N", "OTHER")
    topo.run("app", "ipset", "create", "other", "hash:ip")
    before = (
        save(topo),
        save(topo, "ip6tables-nft-save"),
        topo.run("app", "ipset", "list", "-n").stdout,
    )
    apply(topo)
    assert "SENTINEL" in save(topo)
    result = topo.sentinel("teardown")
    assert result.returncode == 0 and "removed" in result.stdout
    after = (
        save(topo),
        save(topo, "ip6tables-nft-save"),
        topo.run("app", "ipset", "list", "-n").stdout,
    )
    assert after == before
    assert topo.probe("tcp", "198.18.5.5", 443)["ok"]  # egress open again: teardown is real


def test_killing_the_applying_process_never_opens_egress(topo, tmp_path):
    apply(topo)
    big = Path(tmp_path) / "big.yaml"  # a slow apply, to kill it in the middle
    entries = "".join(
        f"  - {{name: e{i}, host: 198.19.{i // 250}.{i % 250 + 1}, ports: [443]}}\n"
        for i in range(20_000)
    )
    big.write_text(
        Path(MEM0).read_text().split("tests:")[0].replace("allow:\n", "allow:\n" + entries, 1)
    )
    for delay in (0.3, 0.6, 0.9, 1.2):
        proc = topo.spawn(
            "app", str(Path(topo_python()).with_name("sentinel")), "apply", "--policy", str(big)
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert not topo.probe("tcp", "198.18.5.5", 443, timeout=0.5)["ok"], (
            f"open after kill at {delay}s"
        )
        assert "-A SENTINEL-OUT -j SENTINEL-DENY" in save(topo)
    apply(topo)  # a clean apply afterwards repairs any leftover staging set
    assert topo.sentinel("status").returncode == 0
    assert "sentinel-allow4-new" not in topo.run("app", "ipset", "list", "-n").stdout
    assert topo.outside_packets() == 0


def test_apply_refuses_bad_policy_without_touching_the_kernel(topo, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nallow:\n  - {name: x, host: postgres, ports: [70000]}\n")
    result = topo.sentinel("apply", "--policy", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3: allow[0].ports[0]: 70000 is not a port" in result.stderr
    assert "SENTINEL" not in save(topo)
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        "version: 1\nallow:\n  - {name: pg, host: postgres, ports: [5432]}\n"
        "tests:\n  - {to: 'pg:5433', expect: allow}\n"
    )
    result = topo.sentinel("apply", "--policy", str(failing))
    assert result.returncode == 1 and "policy tests failed, nothing applied" in result.stderr
    assert "SENTINEL" not in save(topo)


def topo_python() -> str:
    import sys

    return sys.executable


def test_unwritable_state_dir_is_a_clear_error_and_the_deny_stays(topo, tmp_path):
    state = tmp_path / "ro-state"
    state.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "sentinel-ro", str(state)], check=True
    )
    try:
        result = topo.sentinel("apply", "--policy", MEM0, env={"SENTINEL_STATE_DIR": str(state)})
    finally:
        subprocess.run(["umount", str(state)], check=True)
    assert result.returncode == 1
    assert f"cannot write {state}/applied.json: Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr
    assert "-A SENTINEL-OUT -j SENTINEL-DENY" in save(topo)  # rules applied, fail closed
    assert not topo.probe("tcp", "198.18.5.5", 443)["ok"]


def test_identical_reapply_keeps_the_nflog_counters(topo):
    """A restart or re-apply of the same rules must not zero the counters that account for
    attempts made while no sentinel was watching."""
    apply(topo)
    topo.probe("tcp", "198.18.5.5", 443)
    counted = nflog_packets(topo)
    assert counted >= 1
    apply(topo)
    assert nflog_packets(topo) == counted


ROLLBACK = """
import ipaddress, json, sys
from dataclasses import replace
from sentinel.enforce import netfilter
from sentinel.errors import SentinelError
from sentinel.policy.load import load_policy
from sentinel.enforce.render import Rule, render_rules
policy = load_policy("policies/mem0.yaml")
good = render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.2")]})
netfilter.apply(good)
before = netfilter.read_state()
moved = render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.7")]})
# the kernel refuses the IPv6 part (a jump to a chain that does not exist), after IPv4 committed
bad = replace(moved, rules=moved.rules + ((6, Rule("filter", "SENTINEL-OUT", "NO-SUCH-CHAIN")),))
try:
    netfilter.apply(bad)
    print(json.dumps({"raised": False}))
except SentinelError as exc:
    after = netfilter.read_state()
    print(json.dumps({"raised": True, "message": exc.message,
                      "same": after.sha256() == before.sha256() == good.sha256(),
                      "v4": after.text[4], "sets": [s.entries for s in after.sets]}))
"""


def test_kernel_refusal_midway_rolls_everything_back(topo):
    out = json.loads(topo.run("app", topo_python(), "-c", ROLLBACK).stdout)
    assert out["raised"] and "ip6tables-nft-restore" in out["message"], out
    assert out["same"], f"the IPv4 commit and the set swap must be undone: {out}"
    assert not topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]  # the old pin is still allowed


def test_kernel_refusal_on_the_first_apply_leaves_nothing_half_applied(topo):
    code = ROLLBACK.replace("netfilter.apply(good)\n", "", 1).replace(
        '"same": after.sha256() == before.sha256() == good.sha256(),', '"same": not after.present,'
    )
    out = json.loads(topo.run("app", topo_python(), "-c", code).stdout)
    assert out["raised"], out
    assert out["same"], f"nothing of ours may stay after a refused first apply: {out}"
    assert "SENTINEL" not in save(topo) and "SENTINEL" not in save(topo, "ip6tables-nft-save")


PARTIAL_UPDATE = (
    ROLLBACK.split("# the kernel refuses")[0]
    + """
real = netfilter._run
fail = {"sets": True}


def run(cmd, stdin=None):
    # the fast path's one `ipset -exist restore` gets as far as its adds, then the kernel
    # refuses (as a full set would); the full path then fails at IPv6 after IPv4 committed
    if cmd[:3] == ["ipset", "-exist", "restore"] and fail.pop("sets", False):
        real(cmd, "".join(line + "\\n" for line in stdin.splitlines() if line.startswith("add ")))
        raise SentinelError("ipset -exist restore failed: scripted refusal after the adds")
    if cmd[0] == "ip6tables-nft-restore":
        raise SentinelError("ip6tables-nft-restore failed: scripted refusal")
    return real(cmd, stdin)


netfilter._run = run
assert netfilter._same_rules(before, moved)  # the pin change takes the sets-only path first
try:
    netfilter.apply(moved)
    print(json.dumps({"raised": False}))
except SentinelError as exc:
    after = netfilter.read_state()
    print(json.dumps({"raised": True, "message": exc.message,
                      "same": after.sha256() == before.sha256() == good.sha256(),
                      "sets": [s.entries for s in after.sets]}))
"""
)


def test_a_failed_pin_update_then_a_failed_full_apply_leaves_the_old_entries(topo):
    """The sets-only path's adds landed before it failed; the full path that follows must
    roll back to the entries in force before the apply began, not to the half update."""
    out = json.loads(topo.run("app", topo_python(), "-c", PARTIAL_UPDATE).stdout)
    assert out["raised"] and "ip6tables-nft-restore" in out["message"], out
    assert out["same"], f"the half-done pin update must be undone too: {out}"
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]  # the old pin is still allowed
