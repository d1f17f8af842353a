"""IPv6 addresses with an embedded IPv4 address, on a real kernel and a real DNS upstream
(dnsmasq in the lab topology; root, never the root namespace).

glibc's inet_ntop, and with it the kernel's set dump and `ipset save`, prints
`::ffff:198.18.0.2` and `::198.18.0.2` where Python's ipaddress prints `::ffff:c612:2` and
`::c612:2`: the set entries are rendered in the kernel's form, so apply's read-back agrees.
An upstream answer of either form is never pinned (docs/dns.md, "DNS rebinding"), and the
apply says so; a `cidr:` inside ::ffff:0:0/96 is refused like an IPv4-mapped `host:`.
"""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from tests.conftest import RECORDS, query, start

pytestmark = pytest.mark.netns

POLICY = """\
version: 1
mode: enforce
allow:
  - {{name: postgres, host: postgres, ports: [5432]}}
{extra}dns: {{listen_port: 5300}}
"""


def _env() -> dict:
    return {"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]}


def _write(tmp_path, extra: str = ""):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(extra=extra))
    return path


def _allow6(topo) -> str:
    return topo.run("app", "ipset", "list", "sentinel-allow6").stdout


def _in_sync(topo) -> bool:
    return json.loads(topo.sentinel("status", "--format", "json", env=_env()).stdout)["in_sync"]


@pytest.mark.parametrize("aaaa", ["::ffff:198.18.0.2", "::198.18.0.2"])
def test_an_aaaa_answer_embedding_an_ipv4_address_is_not_pinned_and_apply_says_so(
    topo, tmp_path, aaaa
):
    topo.start_dns_server({"postgres": {"A": ["198.18.0.2"], "AAAA": [aaaa]}}, tmp_path, ttl=30)
    done = topo.sentinel("apply", "--policy", str(_write(tmp_path)), env=_env())
    assert done.returncode == 0, done.stderr
    assert "'postgres': 1 answer(s) not pinned" in done.stderr, done.stderr
    assert f"({ipaddress.ip_address(aaaa)})" in done.stderr, done.stderr  # as events word it
    assert "198.18.0.2,tcp:5432" in topo.run("app", "ipset", "list", "sentinel-allow4").stdout
    six = _allow6(topo)
    assert "tcp:5432" not in six, six
    assert _in_sync(topo)
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]  # its A answer is pinned


def test_the_daemon_counts_a_mapped_aaaa_answer_and_never_serves_it(topo, tmp_path):
    mapped = "::ffff:198.18.0.2"
    records = {**RECORDS, "postgres": {"A": ["198.18.0.2"], "AAAA": [mapped]}}
    topo.start_dns_server(records, tmp_path, ttl=30)
    s = start(topo, tmp_path, min_ttl="30s")
    try:
        assert query(topo, "postgres", "AAAA")["addresses"] == []
        assert query(topo, "postgres")["addresses"] == ["198.18.0.2"]
        event = s.wait_event("dns_rebinding", dst_name="postgres")
        assert event["verdict"] == "blocked", event
        assert event["detail"]["dropped"] == [str(ipaddress.ip_address(mapped))], event
        assert mapped not in _allow6(topo) and "c612" not in _allow6(topo)
        assert _in_sync(topo)
    finally:
        s.stop()


def test_a_literal_ipv4_compatible_host_is_rendered_as_the_kernel_prints_it(topo, tmp_path):
    """A policy's own `host: ::198.18.0.2` is the author's choice: pinned, and read back."""
    extra = "  - {name: compat, host: '::198.18.0.2', ports: [5432]}\n"
    done = topo.sentinel("apply", "--policy", str(_write(tmp_path, extra)), env=_env())
    assert done.returncode == 0, done.stderr  # before: the read-back differed, rolled back
    assert "::198.18.0.2,tcp:5432" in _allow6(topo)
    assert _in_sync(topo)


@pytest.mark.parametrize("cidr", ["::ffff:198.18.0.0/120", "::ffff:c612:0/120"])
def test_an_ipv4_mapped_cidr_is_refused_naming_the_field(topo, tmp_path, cidr):
    path = _write(tmp_path, f"  - {{name: mapped, cidr: '{cidr}', ports: [5432]}}\n")
    check = topo.sentinel("check", str(path), env=_env())
    assert check.returncode == 2, (check.stdout, check.stderr)
    assert "allow[1].cidr" in check.stderr and "write 198.18.0.0/24" in check.stderr, check.stderr
    done = topo.sentinel("apply", "--policy", str(path), env=_env())
    assert done.returncode == 2, done.stderr
    assert "SENTINEL" not in topo.run("app", "iptables-nft-save").stdout  # nothing applied
