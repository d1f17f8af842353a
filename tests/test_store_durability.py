"""The store's durability bound, driven for real: a writer process killed with SIGKILL keeps
every event it reported committed; SIGTERM (shutdown) writes everything put; a real overload
sheds, and the shed count reaches the file, the report and the metrics. Real SQLite files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

from sentinel.store import events as ev
from sentinel.store.events import Event, EventStore

# A writer process: one producer puts events with ids in put order, as fast as it can (at
# most LIMIT, at most 60 s); a reporter prints the writer's committed count every few ms.
WRITER = textwrap.dedent(
    """
    import json, signal, sys, threading, time
    from pathlib import Path
    from sentinel.store.events import Event, EventStore

    LIMIT = 3_000_000
    store = EventStore(Path(sys.argv[1]), maxsize=LIMIT).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def produce():
        deadline = time.monotonic() + 60
        for i in range(LIMIT):
            if stop.is_set() or time.monotonic() > deadline:
                return
            store.put(Event(layer="netfilter", kind="egress_attempt", protocol="tcp",
                            dst_ip="198.18.5.5", dst_port=443, family=4, id=f"seq-{i:09d}"))
            if i % 500 == 0:
                time.sleep(0.001)  # a monitor's pace, not a tight loop

    producer = threading.Thread(target=produce)
    producer.start()
    while producer.is_alive():
        print("committed", store.stats()["written"], flush=True)
        time.sleep(0.005)
    producer.join()
    store.stop()  # the shutdown path: flush, then write whatever is left
    print("final", json.dumps(store.stats()), flush=True)
    """
)


def _writer(path):
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stored_ids(path) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM events WHERE id LIKE 'seq-%'")}
    finally:
        conn.close()


def _read_until(proc, committed_at_least: int, timeout: float = 120.0) -> int:
    """Read the writer's reports until it says `committed_at_least` (bounded)."""
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("committed "):
            last = int(line.split()[1])
            if last >= committed_at_least:
                return last
    raise AssertionError(f"the writer reported only {last} committed: {proc.stderr.read()}")


def test_sigkill_mid_stream_keeps_every_event_reported_committed(tmp_path):
    path = tmp_path / "events.db"
    proc = _writer(path)
    try:
        reported = _read_until(proc, 20_000)
        reported = _read_until(proc, reported + 1)  # still streaming: the next report
        proc.kill()  # SIGKILL: no handler, no flush
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    stored = _stored_ids(path)
    # put order is commit order: "N committed" means the first N events are in the file
    missing = [i for i in range(reported) if f"seq-{i:09d}" not in stored]
    assert missing == [], f"{len(missing)} of {reported} reported committed are not in the file"
    assert len(stored) >= reported
    # the next writer counts what sat in the killed one's queue at its last commit
    conn = ev.connect(path, readonly=True)
    accepted, settled = conn.execute("SELECT accepted, settled FROM writers").fetchone()
    conn.close()
    assert settled == len(stored) and accepted >= settled
    store = EventStore(path)
    assert store.stats()["shed"] == accepted - settled
    store.stop()
    conn = ev.connect(path, readonly=True)
    assert ev.shed_counts(conn, 0, time.time() + 1) == (
        {"store": accepted - settled} if accepted > settled else {}
    )
    assert conn.execute("SELECT closed FROM writers ORDER BY started").fetchall() == [(2,), (1,)]
    conn.close()
    assert not list(tmp_path.glob("*.lock"))


def test_sigterm_shutdown_writes_everything_that_was_put(tmp_path):
    path = tmp_path / "events.db"
    proc = _writer(path)
    try:
        _read_until(proc, 20_000)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, err
    final = json.loads(out.strip().splitlines()[-1].removeprefix("final "))
    assert final["shed"] == 0 and final["put"] == final["written"] >= 20_000, final
    assert len(_stored_ids(path)) == final["put"]
    conn = ev.connect(path, readonly=True)
    row = conn.execute("SELECT accepted, settled, closed FROM writers").fetchone()
    assert row == (final["put"], final["put"], 1)  # closed cleanly: nothing to count
    conn.close()
    assert not list(tmp_path.glob("*.lock"))


KILLED_AFTER_ONE_BATCH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from sentinel.store.events import Event, EventStore

    store = EventStore(Path(sys.argv[1]), batch=4)  # the writer thread is not started
    for i in range(10):
        store.put(Event(layer="guard", kind="egress_attempt", dst_port=i))
    store._write_batch()  # one commit: 4 events, 10 accepted
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_what_a_killed_writer_had_queued_is_counted_as_shed_by_the_next_one(tmp_path):
    from sentinel.evidence import report as rep

    path = tmp_path / "events.db"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_ONE_BATCH, str(path)], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list(tmp_path.glob("*.lock"))) == 1  # left behind, its lock gone with the process
    live = EventStore(tmp_path / "other.db")  # a writer on another file counts nothing here
    store = EventStore(path).start()
    assert store.stats()["shed"] == 6
    again = EventStore(path)  # a second writer while the first runs: nothing counted twice
    assert again.stats()["shed"] == 0
    for s in (again, store, live):
        s.stop()
    conn = ev.connect(path, readonly=True)
    assert ev.shed_counts(conn, 0, time.time() + 1) == {"store": 6}
    assert len(ev.query(conn, 0, time.time() + 1)) == 4
    conn.close()
    now = time.time()
    got = rep.build_report(rep.Window(now - 600, now + 1), path, {}, {"present": False})
    assert got["shed_events"] == 6
    later = EventStore(path)
    assert later.stats()["shed"] == 0  # counted once
    later.stop()


def test_a_real_overload_sheds_and_the_count_reaches_file_report_and_metrics(tmp_path):
    from prometheus_client import generate_latest

    from sentinel.evidence import metrics
    from sentinel.evidence import report as rep

    path = tmp_path / "events.db"
    store = EventStore(path, maxsize=100).start()  # the writer is running: a real race
    offered = 0
    accepted = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and offered < 2_000_000:  # until it sheds, bounded
        burst = [
            Event(layer="dns", kind="dns_refused", protocol="dns", dst_name=f"n{offered + i}.test")
            for i in range(5000)
        ]
        accepted += sum(store.put(e) for e in burst)
        offered += len(burst)
        if store.stats()["shed"] >= 1000:
            break
    assert store.flush(timeout=60)
    store.put(Event(layer="sentinel", kind="policy_reloaded", verdict="info"))  # a later batch
    assert store.flush(timeout=60)
    stats = store.stats()
    metrics.watch_store(store)
    scraped = generate_latest(metrics.REGISTRY).decode()
    store.stop()
    shed = offered - accepted
    assert shed >= 1000 and stats["shed"] == shed and stats["written"] == accepted + 1, stats
    assert f"sentinel_events_shed_total {float(shed)}" in scraped
    conn = ev.connect(path, readonly=True)
    assert ev.shed_counts(conn, 0, time.time() + 1) == {"dns": shed}
    assert conn.execute("SELECT COUNT(*) FROM events WHERE layer = 'dns'").fetchone()[0] == (
        accepted
    )
    conn.close()
    now = time.time()
    applied = {"mode": "enforce", "backend": "nft", "ruleset_sha256": "r" * 64, "pins": {}}
    kernel = {"present": True, "sha256": "r" * 64, "nflog_packets": {4: 0, 6: 0}}
    window = rep.Window(now - 600, now + 1)
    got = rep.build_report(window, path, {**applied, "applied_at": now - 60}, kernel)
    assert got["shed_events"] == shed and got["shed_by_layer"] == {"dns": shed}
    assert f"{shed} event(s) shed by the store" in got["coverage_detail"]["problems"]


def test_stop_after_the_writer_died_still_writes_what_was_queued(tmp_path):
    store = EventStore(tmp_path / "e.db").start()
    store._stopping = True  # the writer thread ends as soon as its queue is empty
    store._wake.set()
    store._thread.join(timeout=30)
    assert not store._thread.is_alive()
    store._stopping = False
    events = [Event(layer="netfilter", kind="egress_attempt", dst_port=i) for i in range(10)]
    assert all(store.put(e) for e in events)
    assert store.flush()  # writes from the caller's thread
    store.stop()
    conn = ev.connect(tmp_path / "e.db", readonly=True)
    assert {e.id for e in ev.query(conn, 0, time.time() + 1)} == {e.id for e in events}


def test_a_batch_with_a_repeated_id_and_an_update_is_stored_as_upserts(tmp_path):
    from dataclasses import replace

    conn = ev.connect(tmp_path / "e.db")
    first = Event(layer="netfilter", kind="egress_attempt", dst_port=1)
    ev.write_events(conn, [first], {})
    later = [Event(layer="netfilter", kind="egress_attempt", dst_port=2) for _ in range(3)]
    batch = [later[0], replace(first, packets=5), later[1], replace(later[0], packets=2), later[2]]
    ev.write_events(conn, batch, {})
    got = {e.id: e.packets for e in ev.query(conn, 0, time.time() + 1)}
    assert got == {first.id: 5, later[0].id: 2, later[1].id: 1, later[2].id: 1}
    conn.close()


def test_new_ids_are_the_uuid4_correlation_ids_alerts_carry():
    import uuid

    ids = [ev.new_id() for _ in range(2000)]
    assert len(set(ids)) == 2000 and all(uuid.UUID(i).version == 4 for i in ids)
    assert Event(layer="netfilter", kind="egress_attempt").id != Event(layer="dns", kind="x").id


def test_wal_checkpoints_run_off_the_writer_and_keep_the_wal_bounded(tmp_path):
    from sentinel.store import checkpoint

    path = tmp_path / "e.db"
    store = EventStore(path).start()
    wal = path.with_name("e.db-wal")
    biggest = 0
    deadline = time.monotonic() + 60
    rounds = 0
    while time.monotonic() < deadline and rounds < 400:  # bounded: 400 batches or 60 s
        for i in range(200):
            store.put(Event(layer="netfilter", kind="egress_attempt", dst_port=i))
        assert store.flush()
        biggest = max(biggest, wal.stat().st_size)
        rounds += 1
        if store._checkpointer.checkpoints >= 2:
            break
    auto = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    done = store._checkpointer.checkpoints
    store.stop()
    assert auto == checkpoint.SAFETY_PAGES  # the writer's own checkpoint is only a safety net
    assert done >= 2, f"{done} checkpoints in {rounds} batches"
    assert biggest < checkpoint.SAFETY_PAGES * 4096


def _gated_writes(monkeypatch, gate: threading.Event | None = None, pause: float = 0.0):
    """The writer's batches go through, each after `pause` s or once `gate` opens."""
    from sentinel.store import writer

    real = writer.write_events

    def slow(*args, **kwargs):
        if gate is not None:
            gate.wait(30)
        time.sleep(pause)
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "write_events", slow)


def test_kernel_sightings_wait_for_room_other_producers_shed(tmp_path, monkeypatch):
    # a slow writer and a small queue: the monitor's events wait (the kernel's socket buffer
    # holds the rest of a burst), a DNS answer's event never makes its thread wait
    _gated_writes(monkeypatch, pause=0.02)
    store = EventStore(tmp_path / "e.db", maxsize=20, batch=10).start()
    sightings = [Event(layer="netfilter", kind="egress_attempt", dst_port=i) for i in range(200)]
    assert all(store.put(e) for e in sightings)
    dns = [
        store.put(Event(layer="dns", kind="dns_refused", dst_name=f"n{i}.test")) for i in range(50)
    ]
    assert store.flush(timeout=60)
    stats = store.stats()
    store.stop()
    assert not all(dns) and stats["shed"] == dns.count(False)
    conn = ev.connect(tmp_path / "e.db", readonly=True)
    stored = {e.id for e in ev.query(conn, 0, time.time() + 1) if e.layer == "netfilter"}
    assert stored == {e.id for e in sightings}


def test_a_stalled_writer_sheds_kernel_sightings_after_one_bounded_wait(tmp_path, monkeypatch):
    from sentinel.store import writer

    gate = threading.Event()
    _gated_writes(monkeypatch, gate=gate)
    store = EventStore(tmp_path / "e.db", maxsize=5, batch=1).start()
    try:
        assert store.put(Event(layer="netfilter", kind="egress_attempt", dst_port=0))
        deadline = time.monotonic() + 30
        while store._pending and time.monotonic() < deadline:  # the writer took it, and hangs
            time.sleep(0.01)
        for i in range(1, 6):  # the queue fills
            assert store.put(Event(layer="netfilter", kind="egress_attempt", dst_port=i))
        began = time.monotonic()
        assert not store.put(Event(layer="netfilter", kind="egress_attempt", dst_port=900))
        waited = time.monotonic() - began
        began = time.monotonic()
        assert not store.put(Event(layer="netfilter", kind="egress_attempt", dst_port=901))
        again = time.monotonic() - began
        assert waited >= writer.PUT_WAIT * 0.9 and again < writer.PUT_WAIT / 2, (waited, again)
        assert store.stats()["shed"] == 2
        gate.set()  # the writer commits again: sightings wait for room again
        assert store.flush(timeout=30)
        assert not store._stalled
    finally:
        gate.set()
        store.stop()


def test_put_many_waits_and_sheds_as_put_does_and_counts_where(tmp_path, monkeypatch):
    # batches (the bus' batch form) onto a slow writer with a small queue: a batch that fits
    # is queued whole; one that does not goes event by event, kernel sightings waiting for
    # room and the DNS layer's events shed and counted by layer; every event once
    _gated_writes(monkeypatch, pause=0.02)
    store = EventStore(tmp_path / "e.db", maxsize=20, batch=10).start()
    sightings = [Event(layer="netfilter", kind="egress_attempt", dst_port=i) for i in range(200)]
    queued = [store.put_many(sightings[i : i + 15]) for i in range(0, 200, 15)]
    dns = [Event(layer="dns", kind="dns_refused", dst_name=f"n{i}.test") for i in range(60)]
    queued_dns = sum(store.put_many(dns[i : i + 12]) for i in range(0, 60, 12))
    assert store.flush(timeout=60)
    stats = store.stats()
    store.stop()
    assert sum(queued) == 200 and queued_dns < 60
    assert stats["shed"] == 60 - queued_dns and stats["written"] == 200 + queued_dns
    assert stats["put"] == 200 + queued_dns
    conn = ev.connect(tmp_path / "e.db", readonly=True)
    stored = [e for e in ev.query(conn, 0, time.time() + 1) if e.layer in ("netfilter", "dns")]
    assert sorted(e.id for e in stored if e.layer == "netfilter") == sorted(e.id for e in sightings)
    assert len(stored) == len({e.id for e in stored}) == 200 + queued_dns
    assert ev.shed_counts(conn, 0, time.time() + 1) == {"dns": 60 - queued_dns}


def test_under_load_commits_are_paced_and_a_trickle_is_committed_at_once(tmp_path):
    """A flood (reads of 200 events every few ms) shares commits: at most one per
    COMMIT_EVERY while 64 or more events are queued as one ends (an upper bound: a loaded
    machine only merges more); a lone event is committed without that wait."""
    from sentinel.store import writer

    store = EventStore(tmp_path / "events.db").start()
    try:
        began = time.monotonic()
        for burst in range(25):
            store.put_many([_sighting(f"b{burst}-{i}") for i in range(200)])
            time.sleep(0.005)
        assert store.flush(60)
        took = time.monotonic() - began
        batches = store.stats()["batches"]
        assert store.stats()["written"] == 5000
        assert batches <= took / writer.COMMIT_EVERY + 3, (batches, took)
        time.sleep(0.2)  # idle again
        put = time.monotonic()
        store.put(_sighting("alone"))
        assert store.flush(10) and store.stats()["batches"] == batches + 1
        assert time.monotonic() - put < 5  # committed, not held for a flood's pace
    finally:
        store.stop()
    with sqlite3.connect(tmp_path / "events.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM events WHERE id = 'alone'").fetchone() == (1,)


def _sighting(event_id: str) -> Event:
    return Event(layer="netfilter", kind="egress_attempt", protocol="udp", dst_ip="198.18.5.5",
                 dst_port=9, family=4, id=event_id)  # fmt: skip
