"""The store's bounded wait (sentinel/store/writer.py, PUT_WAIT) driven through a running
`sentinel run`: the test holds the event store's SQLite write lock (a real cause: another
writer), so the daemon's writer cannot commit while a burst of real attempts goes through
netfilter, NFLOG and the monitor. The store's queue fills; kernel sightings wait up to PUT_WAIT
for room, then are shed at once until the writer commits again; the monitor keeps reading
(the store never stalls it). Every attempt is then stored or counted, exactly: recorded + shed
by the store + lost by the kernel socket == attempted, and the shed count is the same in the
store's shed table, `sentinel report` and `/metrics`. Once the lock is gone, attempts are
stored again. Untimed: a burst, conditions polled with generous deadlines."""

from __future__ import annotations

import sqlite3

import pytest

from sentinel.lab.netns import PYTHON
from sentinel.store.writer import DEFAULT_QUEUE
from tests.conftest import RunningSentinel, scrape, wait_for
from tests.test_headroom_netns import FIRST_PORT, SEND, recorded
from tests.test_monitor_netns import report

pytestmark = pytest.mark.netns

POLICY = """\
version: 1
mode: enforce
allow:
  - {name: db, cidr: 198.18.0.2/32, ports: [5432], protocol: tcp}
dns: {min_ttl: 30s, listen_port: 5300}
monitor: {tamper_interval: 2s, metrics_port: 9464}
"""
# past the store's queue (50,000) and the one batch its writer holds (5,000): shed for sure
BURST = DEFAULT_QUEUE + 10_000
AFTER = 1000  # attempts once the lock is gone: stored again, none shed
AFTER_PORT = FIRST_PORT + BURST // 2  # the next free ports of each family
DEPTH = 'sentinel_queue_depth{component="store"}'


def netfilter_attempts(values: dict[str, float]) -> int:
    return int(
        sum(
            v
            for name, v in values.items()
            if name.startswith("sentinel_blocked_attempts_total{") and 'layer="netfilter"' in name
        )
    )


def shed_table(state_dir) -> dict[str, int]:
    with sqlite3.connect(state_dir / "events.db") as conn:
        rows = conn.execute("SELECT layer, SUM(count) FROM shed GROUP BY layer").fetchall()
    return {layer: int(n) for layer, n in rows}


def test_a_blocked_store_sheds_kernel_sightings_and_says_exactly_how_many(
    topo, state_dir, tmp_path
):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    sentinel = RunningSentinel(topo, path)
    lock = None
    try:
        assert wait_for(lambda: scrape(topo).get("sentinel_rules_in_sync") == 1.0, 30)
        lock = sqlite3.connect(state_dir / "events.db", timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the write lock: the daemon's writer cannot commit
        topo.run("app", PYTHON, "-c", SEND, str(FIRST_PORT), str(BURST), timeout=300)
        # the monitor reads every attempt while the store is blocked: a full queue costs a
        # kernel sighting at most PUT_WAIT, then sheds at once; it never stalls the reader
        read = wait_for(lambda: netfilter_attempts(scrape(topo)) >= BURST, 300, interval=1)
        held = scrape(topo)
        assert read, (netfilter_attempts(held), sentinel.log())
        assert held["sentinel_events_shed_total"] > 0, held
        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        # the writer commits again (its queue drains): attempts are stored, not shed
        drained = wait_for(lambda: scrape(topo)[DEPTH] == 0, 180, interval=0.5)
        assert drained, scrape(topo)
        topo.run("app", PYTHON, "-c", SEND, str(AFTER_PORT), str(AFTER), timeout=120)
        settled = wait_for(
            lambda: len(recorded(state_dir) & after_ports()) == AFTER, 120, interval=0.5
        )
        assert settled, (len(recorded(state_dir) & after_ports()), scrape(topo), sentinel.log())
        values = scrape(topo)
        assert values[DEPTH] == 0, values
    finally:
        if lock is not None:
            lock.close()
        code = sentinel.stop(timeout=60)
    assert code == 0, sentinel.log()
    _code, rep = report(topo, "--last", "10m", "--format", "json")
    assert isinstance(rep, dict), rep
    shed, lost = rep["shed_by_layer"], rep["monitor_loss"]["lost"]
    burst = {k for k in recorded(state_dir) if k[1] < AFTER_PORT}
    assert shed.get("netfilter", 0) > 0, shed
    assert len(burst) + shed["netfilter"] + lost == BURST, (len(burst), shed, lost)
    assert len(recorded(state_dir) & after_ports()) == AFTER  # all of them, after the commit
    # one count, three readers: the store's table, the report, the daemon's /metrics
    assert shed_table(state_dir) == shed
    assert values["sentinel_events_shed_total"] == sum(shed.values())
    assert rep["unaccounted_packets"] == shed["netfilter"] + lost  # the kernel's own counters
    assert rep["coverage"] == "partial"
    assert f"{sum(shed.values())} event(s) shed by the store" in rep["coverage_detail"]["problems"]


def after_ports() -> set[tuple[int, int]]:
    return {(4 if i % 2 == 0 else 6, AFTER_PORT + i // 2) for i in range(AFTER)}
