"""Shared fixtures. Namespace tests need root; CI sets SENTINEL_REQUIRE_NETNS=1 so that a
missing capability fails the run instead of skipping it."""

from __future__ import annotations

import os
import shutil

import pytest

from sentinel.lab.netns import Topology


def unavailable(reason: str) -> None:
    """Skip for a missing tool or privilege, but fail where CI requires everything to run."""
    if os.environ.get("SENTINEL_REQUIRE_NETNS") == "1":
        pytest.fail(f"required but unavailable under SENTINEL_REQUIRE_NETNS=1: {reason}")
    pytest.skip(reason)


def needs_tools(*tools: str) -> None:
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        unavailable(f"needs {', '.join(missing)}")


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
        unavailable(reason)
    topology = Topology().build()
    try:
        yield topology
    finally:
        topology.close()
