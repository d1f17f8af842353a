"""`sentinel capture` against a real `sentinel run` in the app namespace (root): scripted
attempts appear once in the capture and in the store with the same event ids; the pcap reads
back with scapy and tcpdump; a stopped capture makes the feed drop and count while the monitor
loses nothing (kernel NFLOG counter == store)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import needs_tools
from scapy.utils import rdpcap
from test_monitor_netns import OUT4, SCRIPTED, attempt
from test_run import RECORDS, start, wait_for

from sentinel.detect import feed as feedmod
from sentinel.lab.netns import PYTHON

pytestmark = pytest.mark.netns
SENTINEL = str(Path(PYTHON).with_name("sentinel"))

FLOOD = r"""
import socket, sys, time
n, rate = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
begin, deadline = time.monotonic(), time.monotonic() + 120
for i in range(n):  # one datagram per destination port: n attempts, n events
    try: s.sendto(b"x", (sys.argv[3], 20000 + i))
    except OSError: pass
    while time.monotonic() < begin + i / rate and time.monotonic() < deadline:
        time.sleep(0.0005)
print(n)
"""


class Capture:
    """`sentinel capture ...` in the app namespace; its stdout lines collected by a thread."""

    def __init__(self, topo, state_dir: Path, *args: str) -> None:
        self.proc = topo.spawn(
            "app", SENTINEL, "capture", *args, env={"SENTINEL_STATE_DIR": str(state_dir)}
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        first = self.proc.stderr.readline()  # "capture: reading live packets ..." once admitted
        assert first.startswith("capture: reading"), first + self.proc.stderr.read()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def records(self, kind: str) -> list[dict]:
        return [x for x in map(json.loads, list(self.lines)) if x["type"] == kind]

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code, self.proc.stderr.read()


def netfilter_events(state_dir: Path) -> list[tuple]:
    with sqlite3.connect(state_dir / "events.db") as conn:
        return conn.execute(
            "SELECT id, protocol, dst_ip, dst_port, packets FROM events "
            "WHERE layer = 'netfilter' AND kind = 'egress_attempt' ORDER BY ts"
        ).fetchall()


def running_sentinel(topo, tmp_path, state_dir):
    topo.start_dns_server(RECORDS, tmp_path, ttl=30)
    s = start(topo, tmp_path, min_ttl="30s")
    ready = lambda: json.loads((state_dir / "daemon.json").read_text()).get("ready")  # noqa: E731
    assert wait_for(lambda: (state_dir / "daemon.json").exists() and ready(), 30), s.log()
    assert (state_dir / feedmod.SOCKET_NAME).exists()
    return s


def test_capture_shows_every_attempt_once_with_the_stored_event_ids(topo, tmp_path, state_dir):
    needs_tools("tcpdump")
    s = running_sentinel(topo, tmp_path, state_dir)
    pcap = tmp_path / "attempts.pcap"
    n = len(SCRIPTED)
    cap = Capture(
        topo, state_dir, "--follow", "--format", "json", "--pcap", str(pcap), "--count", str(n)
    )
    attempt(topo, SCRIPTED)
    code, err = cap.finish()
    assert code == 0, err
    packets = cap.records("packet")
    stored = wait_for(lambda: len(netfilter_events(state_dir)) == n and netfilter_events(state_dir))
    assert len(packets) == n and len(stored) == n
    assert sorted(p["event_id"] for p in packets) == sorted(row[0] for row in stored)
    by_id = {row[0]: row for row in stored}
    for p in packets:  # scapy's dissection agrees with what the monitor stored
        _, protocol, dst, port, _ = by_id[p["event_id"]]
        assert (p["protocol"], p["dst"], p["dport"]) == (protocol, dst, port)
        assert p["verdict"] == "blocked" and p["layer"] == "netfilter"
    assert {p["flags"] for p in packets if p["protocol"] == "tcp"} == {"S"}
    assert cap.records("summary") == [
        {"type": "summary", "packets": n, "dropped": 0, "feed_dropped": 0, "ended": "count"}
    ]
    assert len(rdpcap(str(pcap))) == n
    dump = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, timeout=30
    )
    assert dump.returncode == 0 and len(dump.stdout.splitlines()) == n, dump.stderr
    assert "NFLOG" in dump.stderr  # "link-type NFLOG (Linux netfilter log messages)"

    # without --follow: the recent packets, as text lines naming their events, then exit
    recent = topo.sentinel("capture", env={"SENTINEL_STATE_DIR": str(state_dir)})
    assert recent.returncode == 0, recent.stderr
    lines = recent.stdout.splitlines()
    assert len(lines) == n and all("netfilter blocked IPv" in line for line in lines)
    assert {line.rsplit("event=", 1)[1] for line in lines} == set(by_id)
    assert f"{OUT4}:443" in recent.stdout and "flags=[S]" in recent.stdout
    assert topo.outside_packets() == 0
    assert s.stop() == 0
    assert not (state_dir / feedmod.SOCKET_NAME).exists()


def test_a_stopped_capture_makes_the_feed_drop_and_count_the_monitor_loses_nothing(
    topo, tmp_path, state_dir
):
    s = running_sentinel(topo, tmp_path, state_dir)
    since = time.time()
    cap = Capture(topo, state_dir, "--follow", "--format", "json")
    cap.proc.send_signal(signal.SIGSTOP)  # a reader that stopped reading
    n = 8000  # well past the feed's queue (4,096) and the socket buffers
    try:
        flood = topo.run("app", PYTHON, "-c", FLOOD, str(n), "1500", OUT4, timeout=180)
        assert flood.stdout.strip() == str(n)
        assert wait_for(lambda: len(netfilter_events(state_dir)) >= n, 60)
    finally:
        cap.proc.send_signal(signal.SIGCONT)

    # the capture catches up: what it shows plus what the feed dropped is every packet
    def accounted() -> int:
        return len(cap.records("packet")) + sum(d["count"] for d in cap.records("dropped"))

    assert wait_for(lambda: accounted() == n, 60), (accounted(), n)
    cap.proc.send_signal(signal.SIGTERM)
    code, err = cap.finish()
    assert code == 0, err
    summary = cap.records("summary")[0]
    print("capture summary", summary)  # the figures docs/hardening.md quotes
    shown = cap.records("packet")
    assert summary["dropped"] > 0 and summary["packets"] + summary["dropped"] == n
    assert summary["feed_dropped"] == summary["dropped"] and summary["ended"] == "signal"
    assert f"{summary['dropped']} dropped by the feed" in err
    stored = netfilter_events(state_dir)
    assert len(stored) == n  # the monitor lost nothing
    ids = {row[0] for row in stored}
    assert all(p["event_id"] in ids for p in shown) and len({p["event_id"] for p in shown}) == len(
        shown
    )
    report = topo.sentinel(
        "report", "--since", str(since), env={"SENTINEL_STATE_DIR": str(state_dir)}
    )
    data = json.loads(report.stdout)
    families = data["completeness"]["families"]
    assert families["ipv4"]["kernel"] == families["ipv4"]["stored"] == n
    assert data["unaccounted_packets"] == 0
    assert any("capture_feed_dropping" in line for line in s.raw), "the daemon logs the drops"
    assert topo.outside_packets() == 0
    assert s.stop() == 0
