"""README's command promises that had no test of their own, each through the real command:
`apply --dry-run` prints the ruleset as ipset + iptables-save text and changes nothing,
`check` exits 1 when one of the policy's own tests fails, and sentinel refuses to change
netfilter in the machine's root network namespace (unless SENTINEL_ALLOW_ROOT_NETNS=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel.enforce import rootns
from sentinel.errors import SentinelError
from sentinel.lab.netns import PYTHON

EXE = str(Path(sys.executable).with_name("sentinel"))
PINS = ("--pin", "postgres=198.18.0.2", "--pin", "neo4j=198.18.0.3", "--pin", "ollama=198.18.0.4")


@pytest.mark.netns
def test_dry_run_prints_ipset_and_iptables_save_text_and_changes_nothing(topo):
    env = {"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]}
    out = topo.sentinel("apply", "--dry-run", "--policy", "policies/mem0.yaml", *PINS, env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\n# ipset\ncreate sentinel-allow4 hash:net,port family inet" in text
    assert "add sentinel-allow4 198.18.0.2,tcp:5432\n" in text
    assert "# iptables (IPv4)\n*filter\n" in text and "# ip6tables (IPv6)\n*filter\n" in text
    assert "# nft (netdev egress: frames that skip the IP stack)\ntable netdev sentinel {" in text
    assert "-A OUTPUT -j SENTINEL-OUT\n" in text and text.count("COMMIT\n") >= 2
    assert "-A SENTINEL-OUT -j SENTINEL-DENY\n" in text
    # nothing reached the kernel, and nothing was recorded as applied
    assert "SENTINEL" not in topo.run("app", "iptables-save").stdout
    assert "SENTINEL" not in topo.run("app", "ip6tables-save").stdout
    assert topo.run("app", "ipset", "list", "-n").stdout.strip() == ""
    assert not (Path(os.environ["SENTINEL_STATE_DIR"]) / "applied.json").exists()
    assert topo.probe("tcp", "198.18.5.5", 443)["ok"]  # no deny in force


@pytest.mark.netns
def test_an_unreachable_upstream_is_a_message_not_a_traceback(topo, tmp_path):
    """No route to the DNS upstream (198.19.0.53 is on none of the app's networks and it has
    no default route, so nothing is sent): each name did not resolve, said per name, and the
    policy's own tests then refuse the apply. Exit 1, no traceback."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nallow:\n  - {name: pg, host: postgres, ports: [5432]}\n"
        "  - {name: graph, host: neo4j, ports: [7687]}\n"
        "dns: {upstream: 198.19.0.53}\ntests:\n  - {to: 'postgres:5432', expect: allow}\n"
    )
    env = {"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]}
    out = topo.sentinel("apply", "--dry-run", "--policy", str(path), env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    for name in ("postgres", "neo4j"):  # several names: asked in one pipelined batch
        assert f"'{name}' did not resolve (" in out.stderr, out.stderr
    assert "Network is unreachable" in out.stderr and "nothing applied" in out.stderr


def test_check_exits_1_when_a_policy_test_fails(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nallow:\n  - {name: lan, cidr: 198.18.0.0/24, ports: [443]}\n"
        "tests:\n  - {to: '198.18.0.2:443', expect: allow}\n"
        "  - {to: '198.18.0.2:80', expect: allow}\n"
    )
    out = subprocess.run([EXE, "check", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    assert "198.18.0.2:80" in out.stdout + out.stderr, out


@pytest.mark.netns
def test_root_namespace_is_refused_and_only_there(topo, tmp_path, monkeypatch):
    """This test process runs in the machine's own namespace (the suite never leaves it):
    the refusal fires here, by the command and by the function, and not in the app's."""
    monkeypatch.delenv("SENTINEL_ALLOW_ROOT_NETNS", raising=False)
    assert rootns.in_root_netns()
    with pytest.raises(SentinelError, match="refusing to change netfilter in the machine's root"):
        rootns.ensure_not_root_netns()
    monkeypatch.setenv("SENTINEL_ALLOW_ROOT_NETNS", "1")
    rootns.ensure_not_root_netns()  # the override: returns
    monkeypatch.delenv("SENTINEL_ALLOW_ROOT_NETNS")
    # teardown is the safe command to try here: even unrefused it would find nothing of ours
    env = {k: v for k, v in os.environ.items() if k != "SENTINEL_ALLOW_ROOT_NETNS"}
    env["SENTINEL_STATE_DIR"] = str(tmp_path / "state")
    out = subprocess.run([EXE, "teardown"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0 and "root network namespace" in out.stderr, out
    probe = "from sentinel.enforce.rootns import in_root_netns; print(in_root_netns())"
    assert topo.run("app", PYTHON, "-c", probe).stdout.strip() == "False"
