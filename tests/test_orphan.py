"""The sentinel left alone in a dead app namespace (compose: mem0 restarted) notices and exits
with code 3, so the orchestrator restarts it in the app's current namespace. Unit part here;
the real case is tests/e2e/test_c_faults.py."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from sentinel.run.orphan import OrphanWatch, links


def test_links_excludes_loopback(tmp_path):
    dev = tmp_path / "dev"
    dev.write_text("Inter-|   Receive\n face |bytes\n    lo: 1 2\n  eth0: 3 4\n  eth1@if9: 5 6\n")
    assert links(dev) == {"eth0", "eth1@if9"}


def test_orphaned_only_after_consecutive_empty_checks():
    seen = [{"eth0"}, set(), {"eth0"}, set(), set()]
    watch = OrphanWatch(checks=2, read=lambda: seen.pop(0))
    assert [watch.orphaned() for _ in range(4)] == [False, False, False, True]


def test_a_namespace_that_never_had_links_is_not_orphaned():
    watch = OrphanWatch(checks=1, read=set)
    assert not watch.orphaned()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for ip netns")
def test_links_reads_the_callers_namespace():
    ns = f"sent-orph-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        code = "from sentinel.run.orphan import links; print(sorted(links()))"
        py = ["ip", "netns", "exec", ns, os.sys.executable, "-c", code]
        assert subprocess.run(py, capture_output=True, text=True, check=True).stdout.strip() == "[]"
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            check=True,
        )
        out = subprocess.run(py, capture_output=True, text=True, check=True).stdout
        assert "v0" in out and "v1" in out
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
