"""The namespace facts enforce/netdev.py reads, in a real network namespace: its interfaces and
IPv6 addresses (read_link, for the netdev egress table) and its networks (local_networks, for
the DNS upstream warning `sentinel run` logs)."""

from __future__ import annotations

import json

import pytest

from sentinel.lab.netns import PYTHON

pytestmark = pytest.mark.netns

READ = """
import json
from sentinel.enforce.netdev import local_networks, read_link
from sentinel.policy.safety import upstream_warning
link = read_link()
print(json.dumps({
    "networks": sorted(str(n) for n in local_networks()),
    "devices": list(link.devices), "addresses": list(link.v6_addresses),
    "on_net": upstream_warning("198.18.0.53"), "off_net": upstream_warning("198.19.0.53"),
}))
"""


def test_the_apps_namespace_facts_are_read_from_the_kernel(topo):
    facts = json.loads(topo.run("app", PYTHON, "-c", READ).stdout)
    assert {"127.0.0.0/8", "::1/128", "198.18.0.0/24", "2001:db8::/64"} <= set(facts["networks"])
    assert facts["devices"] == ["eth0"] and topo.v6("app") in facts["addresses"], facts
    assert facts["on_net"] is None, facts  # the upstream on the app's own network: no gateway
    note = facts["off_net"]
    assert note and "198.19.0.53 is on none of this network namespace's networks" in note
    assert "198.18.0.0/24" in note and "127.0.0.0/8" not in note  # loopback is not shown
