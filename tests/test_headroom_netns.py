"""A burst of distinct attempts through real netfilter, NFLOG, the monitor and the store (issue
17, goal 5; untimed: the figures are bench/bench_headroom.py's). Every attempt is recorded or
counted as shed where it was shed, to the exact number, and a shed shows in `sentinel report`'s
coverage. Once with the defaults, once with a socket buffer and a store queue small enough that
the burst must overflow them."""

from __future__ import annotations

import json
import sqlite3

import pytest

from sentinel.lab.netns import PYTHON
from tests.test_monitor_netns import PINS, report, start_monitor, stop, wait_for

pytestmark = pytest.mark.netns
BURST = 5000  # distinct attempts: 2,500 destination ports on each family
FIRST_PORT, MARKER_PORT = 20000, 30000

# In the app namespace: one UDP datagram per (family, port), as fast as Python sends them.
SEND = r"""
import socket, sys
first, n = int(sys.argv[1]), int(sys.argv[2])
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(n):
    sock, dst = (s4, "198.18.5.5") if i % 2 == 0 else (s6, "2001:db8::5")
    try:
        sock.sendto(b"x", (dst, first + i // 2))
    except OSError:
        pass  # rejected on the way out: the point
"""


def recorded(state_dir) -> set[tuple[int, int]]:
    with sqlite3.connect(state_dir / "events.db") as conn:
        rows = conn.execute(
            "SELECT DISTINCT family, dst_port FROM events WHERE kind = 'egress_attempt' "
            "AND dst_port >= ?",
            (FIRST_PORT,),
        ).fetchall()
    return set(rows)


def monitor_stats(state_dir) -> dict:
    with sqlite3.connect(state_dir / "events.db") as conn:
        row = conn.execute(
            "SELECT detail FROM events WHERE kind = 'monitor_heartbeat' ORDER BY ts DESC LIMIT 1"
        ).fetchone()
    return json.loads(row[0])["stats"] if row else {}


def burst_then_marker(topo, state_dir) -> dict:
    """The burst; once the monitor is idle, one more attempt: its sequence number tells the
    monitor how many messages before it the kernel could not deliver. Returns the monitor's
    stats once it has read (or counted as lost) every one of the BURST + 1."""
    topo.run("app", PYTHON, "-c", SEND, str(FIRST_PORT), str(BURST), timeout=120)
    last: list[int] = []

    def idle() -> bool:  # nothing new read over two heartbeats
        last.append(monitor_stats(state_dir).get("messages", -1))
        return len(last) > 4 and last[-1] == last[-5] >= 0

    assert wait_for(idle, timeout=180)
    topo.run("app", PYTHON, "-c", SEND, str(MARKER_PORT), "1", timeout=30)

    def settled() -> dict | None:
        stats = monitor_stats(state_dir)
        return stats if stats.get("messages", 0) + stats.get("lost", 0) >= BURST + 1 else None

    stats = wait_for(settled, timeout=60)
    assert stats, monitor_stats(state_dir)
    return stats


def account(topo, state_dir, stats: dict) -> dict:
    """Recorded + lost by the kernel socket + shed by the store == attempted, exactly."""
    got = recorded(state_dir)
    _code, rep = report(topo, "--last", "10m")
    assert isinstance(rep, dict), rep
    lost = rep["monitor_loss"]["lost"]
    shed = rep["shed_by_layer"].get("netfilter", 0)
    assert stats["messages"] + stats["lost"] == BURST + 1, stats  # the monitor's own books
    assert lost == stats["lost"]
    assert len(got) + lost + shed == BURST + 1, (len(got), lost, shed)
    # the kernel's own NFLOG counters agree: what is not stored is exactly what was shed
    assert rep["unaccounted_packets"] == lost + shed, rep["completeness"]
    problems = rep["coverage_detail"]["problems"]
    if lost:
        assert f"{lost} NFLOG message(s) lost by the monitor" in problems
    if sum(rep["shed_by_layer"].values()):
        assert f"{sum(rep['shed_by_layer'].values())} event(s) shed by the store" in problems
    if lost or shed:
        assert rep["coverage"] == "partial", problems
    return {"recorded": len(got), "lost": lost, "shed": shed, "report": rep}


def test_a_burst_of_distinct_attempts_is_recorded_or_counted(topo, state_dir):
    assert topo.sentinel("apply", "--policy", "policies/mem0.yaml", *PINS).returncode == 0
    proc, _since = start_monitor(topo, "policies/mem0.yaml")
    try:
        stats = burst_then_marker(topo, state_dir)
        out = account(topo, state_dir, stats)
    finally:
        stop(proc)
    # with the default buffer (32 MiB) and queue (50,000) nothing of 5,000 is shed
    assert out["recorded"] == BURST + 1 and out["lost"] == out["shed"] == 0, out
    assert out["report"]["unaccounted_packets"] == 0


def test_a_burst_past_a_small_buffer_says_exactly_what_it_shed(topo, state_dir):
    assert topo.sentinel("apply", "--policy", "policies/mem0.yaml", *PINS).returncode == 0
    # 4 KiB: one datagram of up to 100 messages at a time; the burst sends faster than the
    # monitor reads, so whole datagrams are refused (ENOBUFS) and counted by sequence number
    proc, _since = start_monitor(
        topo, "policies/mem0.yaml", "--rcvbuf", "4096", "--store-queue", "100"
    )
    try:
        stats = burst_then_marker(topo, state_dir)
        out = account(topo, state_dir, stats)
    finally:
        stop(proc)
    assert out["lost"] > 0 and stats["overruns"] > 0, out
    assert out["report"]["coverage"] == "partial"
