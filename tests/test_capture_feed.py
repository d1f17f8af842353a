"""The capture feed and `sentinel capture`'s dissection, without root: a real Monitor (its
`handle()` fed NFLOG messages) and a real CaptureFeed on a Unix socket in a tmp state dir."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.sctp import SCTP
from scapy.utils import rdpcap
from test_monitor import ipv4, nflog

from sentinel.detect import feed as feedmod
from sentinel.detect.feed import CaptureFeed, read_feed
from sentinel.detect.nflog import Monitor
from sentinel.errors import BadInput, SentinelError
from sentinel.evidence.capture import Capture, dissect, run_capture
from sentinel.policy.load import MonitorSettings
from tests.conftest import wait_for as _wait_for

SRC4, DST4 = "198.18.0.10", "198.18.5.5"


def monitor() -> tuple[Monitor, list]:
    got: list = []
    policy = SimpleNamespace(nflog_group=1, monitor=MonitorSettings(fold_window=2.0))
    return Monitor(policy, got.append, info=dict), got


def udp_body(port: int) -> bytes:
    return nflog(ipv4(17, struct.pack("!HHHH", 40000, port, 8, 0), DST4))


@pytest.fixture
def running(tmp_path):
    mon, events = monitor()
    feed = CaptureFeed(mon, tmp_path).start()
    yield mon, events, feed, tmp_path
    feed.stop()


wait_for = partial(_wait_for, interval=0.02)


def packets(records, count: int) -> list:
    """The first `count` packet records a following reader gets (10 s at most), then it is
    closed."""
    got, deadline = [], time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        record = next(records)
        if record is not None and record.kind == feedmod.PACKET:
            got.append(record)
    records.close()
    return got


def test_socket_is_root_only_and_removed_on_stop(tmp_path):
    mon, _ = monitor()
    feed = CaptureFeed(mon, tmp_path).start()
    path = tmp_path / "capture.sock"
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert mon.tap == feed.offer
    feed.stop()
    assert not path.exists() and mon.tap is None


def test_an_unusable_state_dir_leaves_the_monitor_untapped_and_running(tmp_path):
    (tmp_path / "file").write_text("")
    mon, events = monitor()
    feed = CaptureFeed(mon, tmp_path / "file" / "state").start()  # mkdir fails: no feed
    assert mon.tap is None and feed.listener is None
    mon.handle(udp_body(443), time.time())
    assert len(events) == 1
    feed.stop()


def test_no_feed_is_a_clear_error(tmp_path):
    with pytest.raises(SentinelError, match="no capture feed at .*sentinel run"):
        next(read_feed(tmp_path, history=True, follow=False))


def test_each_packet_carries_the_event_it_went_to_folded_ones_too(running):
    mon, events, feed, state = running
    records = read_feed(state, history=False, follow=True, timeout=0.1)
    hello = next(records)  # admitted: from now on every packet is offered to us
    assert (hello.kind, hello.seq, hello.dropped) == (feedmod.STATUS, 0, 0)
    now = time.time()
    mon.handle(udp_body(443), now)
    mon.handle(udp_body(443), now + 0.1)  # the same flow: folded into the first event
    mon.handle(udp_body(444), now + 0.2)
    mon.handle(b"\x02\x00", now + 0.3)  # malformed: shown, no event
    got = packets(records, 4)
    assert [e.dst_port for e in events] == [443, 444]
    assert [r.event_id for r in got] == [events[0].id, events[0].id, events[1].id, None]
    assert [r.seq for r in got] == [1, 2, 3, 4] and {r.dropped for r in got} == {0}
    assert mon.counts["malformed"] == 1


def test_a_read_batch_is_offered_as_its_messages_one_by_one(tmp_path):
    """The monitor's batch path hands the feed a read's messages in one call (`offer_many`):
    the records a reader gets are the ones `offer` per message gives (seq, event ids)."""
    batches: list = []
    policy = SimpleNamespace(nflog_group=1, monitor=MonitorSettings(fold_window=2.0))
    mon = Monitor(policy, lambda e: pytest.fail("emitted alone"), info=dict)
    mon.emit_many = batches.append
    feed = CaptureFeed(mon, tmp_path).start()
    try:
        assert mon.tap_many == feed.offer_many
        records = read_feed(tmp_path, history=False, follow=True, timeout=0.1)
        next(records)  # admitted
        bodies = [udp_body(443), udp_body(443), udp_body(444), b"\x02\x00"]
        mon.handle_many(bodies, time.time())
        got = packets(records, 4)
        (events,) = batches
        assert [r.event_id for r in got] == [events[0].id, events[0].id, events[1].id, None]
        assert [r.body for r in got] == bodies and [r.seq for r in got] == [1, 2, 3, 4]
        assert feed.counts["offered"] == 4 and len(feed.ring) == 4
    finally:
        feed.stop()
    assert mon.tap is None and mon.tap_many is None


def test_recent_packets_without_follow_then_end(running):
    mon, events, feed, state = running
    for port in range(1000, 1000 + feedmod.RING + 10):
        mon.handle(udp_body(port), time.time())
    out = io.StringIO()
    summary = run_capture(state, None, False, None, "json", out, lambda _: None)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    packets = [x for x in lines if x["type"] == "packet"]
    assert len(packets) == feedmod.RING  # the ring keeps the last RING
    assert packets[-1]["dport"] == 1000 + feedmod.RING + 9
    assert packets[-1]["event_id"] == events[-1].id
    assert summary["packets"] == feedmod.RING and summary["dropped"] == 0
    assert summary["ended"] == "end of recent packets" and lines[-1] == summary


def test_a_reader_that_stops_reading_is_dropped_for_counted_the_monitor_never_waits(
    running, monkeypatch
):
    mon, events, feed, state = running
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(state / "capture.sock"))
    sock.sendall(b'{"follow": true}')
    assert wait_for(lambda: feed.readers)
    n = feedmod.QUEUE * 3
    begin = time.monotonic()
    for i in range(n):  # nobody reads: the reader's queue and socket fill up
        mon.handle(udp_body(1 + i % 60000), time.time())
    assert time.monotonic() - begin < 60  # bounded: never blocked on the reader
    assert len(events) == mon.counts["events"] and mon.counts["malformed"] == 0
    reader = feed.readers[0]
    assert reader.dropped > 0
    capture = Capture("json", io.StringIO())
    sock.settimeout(3)
    while True:  # now read everything: the gaps are exactly the drops
        try:
            record = feedmod.decode(sock.recv(1 << 17))
        except TimeoutError:
            break
        capture.take(record)
        if record.kind == feedmod.STATUS and capture.last_seq == n:
            break
    sock.close()
    assert capture.last_seq == n
    assert capture.shown + capture.dropped == n
    assert capture.dropped == reader.dropped == capture.feed_dropped
    assert '"type": "dropped"' in capture.out.getvalue()


def test_bounded_number_of_readers(running):
    mon, _, feed, state = running
    socks = []
    for _ in range(feedmod.MAX_CLIENTS + 1):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(state / "capture.sock"))
        s.sendall(b'{"follow": true}')
        socks.append(s)
    assert wait_for(lambda: feed.counts["refused"] == 1)
    assert len(feed.readers) == feedmod.MAX_CLIENTS
    socks[-1].settimeout(3)
    assert socks[-1].recv(100) == b""  # closed without a status record
    with pytest.raises(SentinelError, match="refused this reader"):
        next(read_feed(state, history=False, follow=True))
    for s in socks:
        s.close()


def test_dissection_fields_come_from_scapy():
    d = dissect(nflog(bytes(IP(src=SRC4, dst=DST4) / TCP(sport=5, dport=443, flags="FPU"))))
    assert (d.layer, d.verdict, d.family, d.protocol) == ("netfilter", "blocked", 4, "tcp")
    assert (d.dst, d.sport, d.dport, d.flags) == (DST4, 5, 443, "FPU")
    v6 = IPv6(src="2001:db8::10", dst="2001:db8::5") / IPv6ExtHdrHopByHop()
    d = dissect(nflog(bytes(v6 / IPv6ExtHdrFragment(m=1) / UDP(dport=53)), b"sentinel:audit\0"))
    assert (d.verdict, d.protocol, d.dport, d.fragment, d.ip_proto) == (
        "audited",
        "udp",
        53,
        "first",
        17,
    )
    d = dissect(nflog(bytes(IP(src=SRC4, dst=DST4) / SCTP(sport=1, dport=2))))
    assert (d.protocol, d.sport, d.dport) == ("sctp", 1, 2)
    d = dissect(nflog(bytes(IP(src=SRC4, dst=DST4, proto=253) / b"x")))
    assert (d.protocol, d.ip_proto, d.dport) == ("ip-253", 253, None)
    assert dissect(b"\x02").verdict == "malformed"
    assert dissect(nflog(b"\x45" + b"\0" * 30, b"other\0")).verdict == "foreign"


def test_pcap_is_link_type_239_and_reads_back(running, tmp_path):
    mon, events, feed, state = running
    for port in (1, 2, 3):
        mon.handle(udp_body(port), time.time())
    pcap = tmp_path / "c.pcap"
    run_capture(state, None, False, pcap, "text", io.StringIO(), lambda _: None)
    packets = rdpcap(str(pcap))
    assert len(packets) == 3
    assert int.from_bytes(pcap.read_bytes()[20:24], sys.byteorder) == 239  # pcap linktype
    if os.path.exists("/usr/bin/tcpdump"):
        out = subprocess.run(
            ["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, timeout=30
        )
        assert out.stdout.count(f"{SRC4}.40000 > {DST4}.") == 3, out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, "text", None), "--count"),
        ((None, "xml", None), "--format"),
        ((None, "text", "/nonexistent/dir/f.pcap"), "--pcap"),
    ],
)
def test_bad_arguments_are_bad_input(tmp_path, args, message):
    count, fmt, pcap = args
    with pytest.raises(BadInput, match=message):
        run_capture(tmp_path, count, False, Path(pcap) if pcap else None, fmt, io.StringIO(), print)


def test_the_daemon_never_imports_scapy():
    code = (
        "import sys, sentinel.run.services, sentinel.run.daemon, sentinel.detect.feed;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scapy'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_command_exit_codes(tmp_path):
    exe = str(Path(sys.executable).with_name("sentinel"))
    env = {**os.environ, "SENTINEL_STATE_DIR": str(tmp_path)}
    run = lambda *a: subprocess.run([exe, "capture", *a], capture_output=True, text=True, env=env)  # noqa: E731
    missing = run("--follow")
    assert missing.returncode == 1 and "no capture feed at" in missing.stderr
    bad = run("--count", "0")
    assert bad.returncode == 2 and "--count" in bad.stderr
    assert not list(tmp_path.iterdir())  # nothing written
