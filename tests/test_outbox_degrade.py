"""A state directory that turns read-only or full never stops alerting: the outbox moves into
memory with its pending rows, and says so."""

import os
import subprocess

import pytest
from conftest import unavailable

from sentinel.alerts.model import Alert
from sentinel.alerts.outbox import Outbox


@pytest.fixture
def sample_alert() -> Alert:
    return Alert(
        severity="P1",
        kind="egress_attempt",
        title="egress attempt to 198.18.5.5:443",
        dedup_key="k",
        correlation_id="6c0e4a8e-1f7b-4a53-9a57-0d3f5e0e8e11",
    )


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        unavailable("needs root to mount a tmpfs")
    path = tmp_path / "state"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "sentinel-t", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory) -> None:
    """Fill the (2 MB) tmpfs: bounded by its size."""
    with open(directory / "filler", "wb") as f:
        try:
            for _ in range(64):
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_full_disk_mid_run_moves_the_outbox_into_memory(tmpfs, sample_alert):
    box = Outbox(tmpfs / "alerts.db")
    box.put("slack", sample_alert)
    fill(tmpfs)
    for _ in range(50):  # until a write needs a page the disk no longer has
        box.put("slack", sample_alert)
        if box.degraded:
            break
    assert box.degraded and "full" in box.degraded
    pending = box.pending("slack")
    assert pending >= 2  # the rows written before are still there
    row = box.head("slack")
    box.delivered(row, 0)
    assert box.pending("slack") == pending - 1 and box.counters()["sent:slack"] == 1


def test_unwritable_state_dir_at_start_gives_a_memory_outbox(tmpfs, sample_alert):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    box = Outbox(tmpfs / "alerts.db")
    assert box.degraded
    box.put("pagerduty", sample_alert)
    assert box.head("pagerduty").alert == sample_alert
