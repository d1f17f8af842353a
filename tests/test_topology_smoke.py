import pytest

pytestmark = pytest.mark.netns


def test_upstreams_reachable_without_rules(topo):
    result = topo.probe("tcp", "postgres", 5432)
    assert result["ok"], result
    assert result["reply"].strip() == "ok postgres"
    assert topo.outside_packets() == 0
    assert topo.probe("tcp", "198.18.5.5", 443)["ok"]
    assert topo.outside_packets() > 0  # the counter works
