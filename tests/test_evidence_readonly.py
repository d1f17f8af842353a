"""`sentinel report` and `--bundle` never change the evidence they read: every store is opened
with `mode=ro`, nothing is created, migrated or set aside; a damaged store is an error with
exit code 2 and stays byte-identical. The state comes from a real `sentinel run`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import RECORDS, query, start, tree_hash

pytestmark = pytest.mark.netns


def report(topo, *args: str):
    env = {"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]}
    return topo.sentinel("report", "--last", "10m", "--format", "json", *args, env=env)


def test_report_and_bundle_leave_the_state_dir_byte_identical(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    s = start(topo, tmp_path)
    assert query(topo, "api.openai.com")["rcode"] == "REFUSED"
    s.wait_event("egress_attempt", dst_name="api.openai.com")
    assert s.stop() == 0
    assert (state / "events.db").exists() and (state / "alerts.db").exists()
    before = tree_hash(state)

    out = report(topo, "--bundle", str(tmp_path / "bundle"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["attempts_by_layer"] == {"dns": 1}
    assert tree_hash(state) == before  # no -wal/-shm left, nothing migrated or renamed

    # a damaged outbox: an error naming it, exit 2, and the file exactly as it was
    alerts_db = state / "alerts.db"
    alerts_db.write_bytes(b"this is not an SQLite database\n" * 200)
    before = tree_hash(state)
    out = report(topo)
    assert out.returncode == 2, out
    assert "alert outbox" in out.stderr and "alerts.db is unreadable" in out.stderr, out.stderr
    out = report(topo, "--bundle", str(tmp_path / "bundle2"))
    assert out.returncode == 2, out
    assert tree_hash(state) == before
    assert not list(state.glob("alerts.db.corrupt-*"))

    # a damaged event store: the same
    alerts_db.unlink()
    (state / "events.db").write_bytes(b"\0garbage" * 512)
    before = tree_hash(state)
    out = report(topo)
    assert out.returncode == 2 and "cannot open event store" in out.stderr, out
    assert tree_hash(state) == before


def test_report_on_an_empty_state_dir_creates_nothing(topo, tmp_path):
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    out = report(topo, "--bundle", str(tmp_path / "bundle"))
    assert out.returncode in (0, 1), out.stderr  # 1: nothing applied counts as drift
    assert json.loads(out.stdout)["attempts_total"] == 0
    assert list(state.iterdir()) == []


def test_results_into_a_missing_directory_is_bad_input(topo, tmp_path):
    out = report(topo, "--results", str(tmp_path / "missing" / "results.json"))
    assert out.returncode == 2, out
    assert "--results" in out.stderr and "cannot write" in out.stderr
    assert "Traceback" not in out.stderr
