"""`report --bundle` streams the window's events into flows.jsonl and kernel-counters.jsonl:
the files are exactly what loading the whole window at once gave (the store's one query, every
event redacted), the bundle verifies, and the slicing never changes a byte (ties included)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from sentinel import redact
from sentinel.evidence import bundle
from sentinel.lab import bigstore
from sentinel.redact import redact_obj
from sentinel.store import events as ev

pytestmark = pytest.mark.netns
SECRET = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"


def fill(state: Path, now: float) -> Path:
    """A bigstore day plus a burst of events sharing one timestamp, some holding secrets."""
    path = ev.db_path(state)
    bigstore.build(path, 20_000, now, span=3600)
    burst = [
        ev.Event("guard", "connect_blocked", dst_ip="198.18.5.5", dst_port=443, ts=now - 900,
                 dst_name=f"u{i}@example.com", detail={"token": SECRET, "user_id": f"u{i}"})
        for i in range(300)
    ]  # fmt: skip
    conn = ev.connect(path)
    try:
        ev.write_events(conn, burst, {})
    finally:
        conn.close()
    return path


def loaded_whole(store: Path, window: dict) -> tuple[str, str]:
    """The bundle's two event files as they were made before streaming: one query, in memory."""
    conn = ev.connect(store, readonly=True)
    try:
        rows = ev.query(conn, window["since"], window["until"])
    finally:
        conn.close()
    flows = [
        json.dumps(redact_obj(e.to_dict()), sort_keys=True, default=str)
        for e in rows
        if e.verdict != "info"
    ]
    counters = [
        json.dumps({"ts": e.ts, **e.detail}, sort_keys=True)
        for e in rows
        if e.kind == "kernel_counters"
    ]
    return "".join(f"{x}\n" for x in flows), "".join(f"{x}\n" for x in counters)


@pytest.fixture(autouse=True)
def user_key(monkeypatch):
    """One user-id key for this process and the report's (pseudonyms compare equal)."""
    monkeypatch.setenv(redact.KEY_ENV, "bundle-stream-test-key")
    redact.use_key(None, create=False)


def test_the_streamed_bundle_is_what_loading_the_window_gave_and_verifies(topo, tmp_path):
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    store = fill(state, time.time())
    out_dir = tmp_path / "bundle"
    env = {"SENTINEL_STATE_DIR": str(state)}
    done = topo.sentinel("report", "--last", "2h", "--format", "json", "--bundle", str(out_dir),
                         env=env)  # fmt: skip
    assert done.returncode in (0, 1), done.stderr  # 1: the attempts are a violation
    window = json.loads((out_dir / "report.json").read_text())["window"]
    flows, counters = loaded_whole(store, window)
    assert flows.count("\n") > 15_000 and counters.count("\n") >= 60
    assert (out_dir / "flows.jsonl").read_text() == flows
    assert (out_dir / "kernel-counters.jsonl").read_text() == counters
    assert SECRET not in flows and "u7@example.com" not in flows  # still redacted
    assert bundle.verify(out_dir) == []
    check = subprocess.run(["sha256sum", "-c", bundle.MANIFEST], cwd=out_dir, capture_output=True)
    assert check.returncode == 0, check.stdout


def test_the_slices_change_no_byte(state_dir, tmp_path, monkeypatch):
    """Tiny slices (the span halves down to the burst's one timestamp, and grows again) give
    the same files as the default ones."""
    now = time.time()
    store = fill(state_dir, now)
    window = {"since": now - 3600, "until": now}
    made = {}
    for rows in (bundle.SLICE_ROWS, 7):
        monkeypatch.setattr(bundle, "SLICE_ROWS", rows)
        out = tmp_path / str(rows)
        out.mkdir()
        bundle._write_flows(out, window, store)
        made[rows] = [(out / n).read_bytes() for n in (bundle.FLOWS, bundle.COUNTERS)]
        conn = ev.connect(store, readonly=True)
        try:
            seen = [len(s) for s in bundle._slices(conn, window["since"], window["until"])]
        finally:
            conn.close()
        assert sum(seen) > 20_000 and max(seen) < sum(seen) / 4, seen  # never the window
    assert sorted(seen)[len(seen) // 2] <= 4 * 7, seen  # the slices shrank to about 7 rows
    assert made[7] == made[bundle.SLICE_ROWS]
    assert made[7][0].decode() == loaded_whole(store, window)[0]
