"""`cidr: 0.0.0.0/0` and `::/0` in audit mode on a real kernel (root; never the root namespace).

The policy model allows them there (a warning, sentinel/policy/safety.py) and refuses them in
enforce mode; the kernel's hash:net,port sets refuse a /0 prefix, so the renderer writes each
as its two /1 halves, and every reader of the sets (apply's read-back, status, explain, the
report's per-entry counters) sees the halves.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest

from tests.conftest import report

pytestmark = pytest.mark.netns

AUDIT_ALL = """\
version: 1
mode: audit
allow:
  - {name: postgres, host: 198.18.0.2, ports: [5432]}
  - {name: web4, cidr: 0.0.0.0/0, ports: [443]}
  - {name: web6, cidr: "::/0", ports: [443]}
dns: {listen_port: 5300}
tests:
  - {to: "198.18.5.5:443", expect: allow}
  - {to: "[2001:db8::5]:443", expect: allow}
  - {to: "198.18.5.5:80", expect: deny}
"""
HALVES = (
    "0.0.0.0/1,tcp:443",
    "128.0.0.0/1,tcp:443",
    "::/1,tcp:443",
    "8000::/1,tcp:443",
)


def _env() -> dict:
    return {"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]}


def _set_counters(topo) -> dict[str, int]:
    """{entry: packets} of our allow sets, from `ipset list` (the kernel's own tool)."""
    text = topo.run("app", "ipset", "list", "sentinel-allow4").stdout
    text += topo.run("app", "ipset", "list", "sentinel-allow6").stdout
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\S+,\S+) packets (\d+) bytes \d+", text, re.M)
    }


def _nflog_packets(topo) -> int:
    text = topo.run("app", "iptables-nft-save", "-c").stdout
    text += topo.run("app", "ip6tables-nft-save", "-c").stdout
    return sum(
        int(m.group(1))
        for m in re.finditer(r"^\[(\d+):\d+\] -A SENTINEL-DENY -j NFLOG", text, re.M)
    )


def test_audit_allow_everything_is_applied_as_two_halves_per_family(topo, tmp_path):
    path = tmp_path / "audit-all.yaml"
    path.write_text(AUDIT_ALL)
    check = topo.sentinel("check", str(path), env=_env())
    assert check.returncode == 0, check.stderr
    for field in ("allow[1].cidr: 0.0.0.0/0", "allow[2].cidr: ::/0"):
        assert f"{field} allows every destination" in check.stderr, check.stderr
    since = time.time() - 1
    applied = topo.sentinel("apply", "--policy", str(path), env=_env())
    assert applied.returncode == 0, applied.stderr  # before: the kernel refused the /0 entries
    counters = _set_counters(topo)
    assert set(HALVES) <= set(counters), counters
    assert not any("/0," in entry for entry in counters), counters
    status = json.loads(topo.sentinel("status", "--format", "json", env=_env()).stdout)
    assert status["in_sync"], status  # the read-back and the expectation agree

    # allowed by the set (counted per entry, not audited); port 80 is audited (NFLOG)
    audited = _nflog_packets(topo)
    assert topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert topo.probe("tcp", "2001:db8::5", 443)["ok"]
    assert _nflog_packets(topo) == audited
    counters = _set_counters(topo)
    assert counters["128.0.0.0/1,tcp:443"] > 0 and counters["::/1,tcp:443"] > 0, counters
    assert counters["0.0.0.0/1,tcp:443"] == counters["8000::/1,tcp:443"] == 0, counters
    topo.probe("tcp", "198.18.5.5", 80)
    assert _nflog_packets(topo) > audited

    # explain names the half and the policy entry it came from
    out = topo.sentinel("explain", "198.18.5.5:443", "--format", "json", env=_env())
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    netfilter = next(x for x in result["layers"] if x["layer"] == "netfilter")
    assert netfilter["checked"][0]["set_entry"] == "128.0.0.0/1,tcp:443", netfilter
    assert [e["name"] for e in result["entries"]] == ["web4"], result["entries"]
    assert result["entries"][0]["cidr"] == "0.0.0.0/0"

    # the report's per-entry counters are the kernel's
    rows = {r["entry"]: r for r in report(topo, since)["netflow"]}
    assert rows["128.0.0.0/1,tcp:443"]["packets_since_apply"] == counters["128.0.0.0/1,tcp:443"]
    assert rows["::/1,tcp:443"]["packets_since_apply"] == counters["::/1,tcp:443"]

    # a re-apply of the same policy takes the sets-only path and stays in sync
    again = topo.sentinel("apply", "--policy", str(path), env=_env())
    assert again.returncode == 0, again.stderr
    assert json.loads(topo.sentinel("status", "--format", "json", env=_env()).stdout)["in_sync"]


REFUSED = """
import json
from dataclasses import replace
from sentinel.enforce import netfilter
from sentinel.enforce.render import IpSet, render_rules
from sentinel.errors import SentinelError
from sentinel.policy.load import load_policy
policy = load_policy("policies/mem0.yaml")
good = render_rules(policy, {})
netfilter.apply(good)
before = netfilter.read_state()
# a /0 entry written straight into the set, as the renderer once did: the kernel refuses it
v4 = next(s for s in good.sets if s.name == "sentinel-allow4")
bad_set = IpSet(v4.name, 4, tuple(sorted((*v4.entries, "0.0.0.0/0,tcp:443"))))
bad = replace(good, sets=tuple(bad_set if s is v4 else s for s in good.sets))
try:
    netfilter.apply(bad)
    print(json.dumps({"raised": False}))
except SentinelError as exc:
    after = netfilter.read_state()
    print(json.dumps({"raised": True, "message": exc.message,
                      "same": after.sha256() == before.sha256() == good.sha256(),
                      "sets": [s.entries for s in after.sets]}))
"""


def test_a_set_entry_the_kernel_refuses_rolls_the_apply_back(topo):
    out = json.loads(topo.run("app", sys.executable, "-c", REFUSED).stdout)
    assert out["raised"], out
    assert out["same"], f"the refused apply must leave the kernel as it was: {out}"
    assert not any("0.0.0.0/0" in e for entries in out["sets"] for e in entries), out
    assert not topo.probe("tcp", "198.18.5.5", 443)["ok"]  # still enforcing
