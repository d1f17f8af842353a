"""Shared fixtures. Namespace tests need root; CI sets SENTINEL_REQUIRE_NETNS=1 so that a
missing capability fails the run instead of skipping it."""

from __future__ import annotations

import os
import shutil

import pytest

from sentinel.netns import Topology


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables-nft-restore", "ip6tables-nft-restore", "ipset"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    path = tmp_path / "state"
    monkeypatch.setenv("SENTINEL_STATE_DIR", str(path))
    return path


@pytest.fixture
def topo(state_dir):
    """A fresh namespace topology per test, always deleted."""
    reason = _netns_unavailable()
    if reason:
        if os.environ.get("SENTINEL_REQUIRE_NETNS") == "1":
            pytest.fail(f"namespace tests required but unavailable: {reason}")
        pytest.skip(reason)
    topology = Topology().build()
    try:
        yield topology
    finally:
        topology.close()
