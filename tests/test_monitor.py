"""NFLOG parsing and flow folding: pure, no root. The kernel side is in test_monitor_netns.py."""

from __future__ import annotations

import gc
import ipaddress
import socket
import struct
from dataclasses import FrozenInstanceError, asdict, replace
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.detect.flows import Folder, flow_event
from sentinel.detect.nflog import Monitor
from sentinel.detect.packets import (
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    NFULA_SEQ,
    Flow,
    parse_ip,
    parse_nflog,
)
from sentinel.enforce.nflog_socket import _attr
from sentinel.policy.load import MonitorSettings
from sentinel.store.events import Event


def ipv4(proto: int, rest: bytes, dst: str = "198.18.5.5", frag: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(rest),
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address("198.18.0.10").packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + rest


def ipv6(nxt: int, rest: bytes, dst: str = "2001:db8::5") -> bytes:
    header = struct.pack("!IHBB", 6 << 28, len(rest), nxt, 64)
    src = ipaddress.IPv6Address("2001:db8::10").packed
    return header + src + ipaddress.IPv6Address(dst).packed + rest


def tcp(sport: int = 40000, dport: int = 443) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x02, 1024, 0, 0)


def nflog(payload: bytes, prefix: bytes = b"sentinel:deny\0", seq: int | None = None) -> bytes:
    body = struct.pack("!BBH", socket.AF_INET, 0, 1) + _attr(NFULA_PREFIX, prefix)
    if seq is not None:
        body += _attr(NFULA_SEQ, struct.pack("!I", seq))
    return body + _attr(NFULA_PAYLOAD, payload)


def test_parse_nflog_tlvs():
    packet = parse_nflog(nflog(ipv4(6, tcp()), seq=7))
    assert (packet.group, packet.prefix, packet.seq) == (1, "sentinel:deny", 7)
    assert parse_ip(packet.payload) == Flow(4, "tcp", "198.18.0.10", "198.18.5.5", 40000, 443)


def test_parse_ip_protocols():
    assert parse_ip(ipv4(17, tcp(5, 53))).protocol == "udp"
    icmp = parse_ip(ipv4(1, struct.pack("!BBHHH", 8, 0, 0, 77, 1)))
    assert (icmp.protocol, icmp.icmp_type, icmp.icmp_id, icmp.dst_port) == ("icmp", 8, 77, None)
    v6 = parse_ip(ipv6(6, tcp(1234, 443)))
    assert (v6.family, v6.dst_ip, v6.src_port, v6.dst_port) == (6, "2001:db8::5", 1234, 443)
    icmp6 = parse_ip(ipv6(58, struct.pack("!BBHHH", 128, 0, 0, 9, 1)))
    assert (icmp6.protocol, icmp6.icmp_type) == ("icmpv6", 128)


def test_ipv6_extension_headers_and_fragments():
    hop = struct.pack("!BB6x", 17, 0)  # hop-by-hop, 8 bytes, next = UDP
    assert parse_ip(ipv6(0, hop + tcp(9, 53))).dst_port == 53
    first = struct.pack("!BBHI", 6, 0, 0x0001, 1)  # fragment offset 0, more fragments
    assert parse_ip(ipv6(44, first + tcp(1, 443))).dst_port == 443
    later = struct.pack("!BBHI", 6, 0, 0x0010, 1)  # offset 2: no transport header here
    assert parse_ip(ipv6(44, later + b"x" * 8)).dst_port is None
    assert parse_ip(ipv4(6, b"x" * 8, frag=0x0005)).dst_port is None


def _monitor(window: float = 2.0) -> tuple[Monitor, list]:
    got: list = []
    policy = SimpleNamespace(nflog_group=1, monitor=MonitorSettings(fold_window=window))
    return Monitor(policy, got.append, info=dict), got


def test_malformed_input_is_counted_never_raised():
    monitor, got = _monitor()
    for body in (
        b"",
        b"\x02\x00",
        nflog(b""),
        nflog(b"\x45" + b"\0" * 5),
        nflog(b"\x99" * 40),
        b"\x02\x00\x00\x01\xff\xff\x09\x00",
    ):
        monitor.handle(body, 1.0)
    assert monitor.counts["malformed"] == 6 and got == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_messages_never_crash(data):
    monitor, _ = _monitor()
    monitor.handle(data, 1.0)
    monitor.handle(nflog(data), 1.0)
    assert monitor.counts["messages"] == 2


def _walked(body: bytes) -> tuple:
    """What the message says, by the plain walk over its attributes (the reference)."""
    from sentinel.detect.packets import NFULA_MARK, iter_tlvs

    attrs = iter_tlvs(body, 4)  # raises Malformed as parse_nflog must
    if NFULA_PAYLOAD not in attrs:
        return ("malformed",)
    family, _version, group = struct.unpack_from("!BBH", body)
    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace")
    seq, mark = attrs.get(NFULA_SEQ), attrs.get(NFULA_MARK)
    seq = int.from_bytes(seq, "big") if seq is not None and len(seq) == 4 else None
    mark = int.from_bytes(mark, "big") if mark is not None and len(mark) == 4 else 0
    return (family, group, prefix, attrs[NFULA_PAYLOAD], seq, mark)


def _parsed(body: bytes) -> tuple:
    from sentinel.enforce.nflog_socket import Malformed

    try:
        return tuple(parse_nflog(body))
    except Malformed:
        return ("malformed",)


attribute = st.tuples(
    st.sampled_from([1, 2, 5, 9, 10, 12, 0x4009, 0x800A, 13]),  # some with the nested bits
    st.binary(max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(attribute, max_size=7), st.lists(attribute, max_size=7), st.binary(max_size=3))
def test_a_learnt_layout_reads_a_message_as_the_walk_does(first, second, tail):
    """parse_nflog reads a message whose attribute headers match a layout learnt at that
    length from where that layout had its values: the result is the walk's, for messages of
    the same layout (the second read of each), of another layout at the same length, and of
    broken ones (a truncated tail, a bad length)."""
    from sentinel.detect import packets

    packets._LAYOUTS.clear()  # learnt afresh: the first message teaches its length's layout
    head = struct.pack("!BBH", socket.AF_INET, 0, 7)
    one = head + b"".join(_attr(k, v) for k, v in first) + tail
    other = head + b"".join(_attr(k, v) for k, v in second)
    other += b"\0" * max(0, len(one) - len(other))
    broken = one[:-1] if one[4:] else one + b"\xff"
    for body in (one, one, other, other[: len(one)], broken, one[:4] + b"\xff\xff" + one[6:]):
        assert _parsed(body) == _walked(body) if _walks(body) else _parsed(body) == ("malformed",)
    if _walks(one) and _walked(one) != ("malformed",):  # its second read took the layout
        assert len(one) in packets._LAYOUTS


def _walks(body: bytes) -> bool:
    from sentinel.detect.packets import iter_tlvs
    from sentinel.enforce.nflog_socket import Malformed

    try:
        iter_tlvs(body, 4)
    except Malformed:
        return False
    return len(body) >= 4


def test_foreign_prefix_and_sequence_gaps():
    monitor, got = _monitor()
    monitor.handle(nflog(ipv4(6, tcp()), prefix=b"someone-else\0", seq=0), 1.0)
    monitor.handle(nflog(ipv4(6, tcp(2)), seq=1), 1.0)
    monitor.handle(nflog(ipv4(6, tcp(3)), seq=5), 1.0)  # 2, 3, 4 were lost
    assert monitor.counts["foreign"] == 1 and monitor.counts["lost"] == 3 and len(got) == 2


def test_audit_prefix_gives_audited_verdict():
    monitor, got = _monitor()
    monitor.handle(nflog(ipv4(6, tcp()), prefix=b"sentinel:audit\0"), 1.0)
    assert got[0].verdict == "audited" and got[0].layer == "netfilter"


def test_retransmits_fold_into_one_event_with_a_count():
    monitor, got = _monitor(window=2.0)
    syn = nflog(ipv4(6, tcp(40000)))
    for t in (10.0, 11.0, 12.9):  # SYN + retransmits, each within 2 s of the previous
        monitor.handle(syn, t)
    monitor.handle(nflog(ipv4(6, tcp(40001))), 11.5)  # another source port: another attempt
    assert [e.packets for e in got] == [1, 1]
    updates = monitor.folder.expire(20.0)
    assert len(updates) == 1 and updates[0].id == got[0].id and updates[0].packets == 3
    monitor.handle(syn, 30.0)  # the same tuple much later: a new attempt
    assert len(got) == 3 and got[2].id != got[0].id


def test_folder_is_bounded():
    folder = Folder(window=100, max_flows=10)
    flows = [Flow(4, "udp", "a", "b", p, 53) for p in range(25)]
    for f in flows:
        folder.feed(f, "blocked", 1.0)
    folder.feed(flows[-1], "blocked", 1.5)
    assert len(folder) == 10
    assert [e.packets for e in folder.expire(0, everything=True)] == [2]


def test_canary_probes_are_told_apart_by_their_mark():
    from sentinel.detect.canary import CANARY_MARK
    from sentinel.detect.packets import NFULA_MARK

    monitor, got = _monitor()
    probe = nflog(ipv4(6, tcp())) + _attr(NFULA_MARK, struct.pack("!I", CANARY_MARK))
    monitor.handle(probe, 1.0)
    forged = nflog(ipv4(6, tcp(dport=80))) + _attr(NFULA_MARK, struct.pack("!I", 0x1234))
    monitor.handle(forged, 1.0)
    assert [(e.layer, e.kind, e.verdict) for e in got] == [
        ("canary", "canary_probe", "blocked"),
        ("netfilter", "egress_attempt", "blocked"),  # any other mark is an ordinary attempt
    ]


@pytest.mark.parametrize(
    "flow, verdict",
    [
        (Flow(4, "udp", "198.18.0.10", "198.18.5.5", 40000, 53), "blocked"),
        (Flow(6, "icmpv6", "2001:db8::10", "2001:db8::5", icmp_type=128, icmp_id=9), "audited"),
        (Flow(4, "tcp", "198.18.0.10", "198.18.5.5", 1, 443), "canary-blocked"),
        (
            Flow(4, "ether-0x88cc", "02:00:00:00:00:01", "02:00:00:00:00:02", link="frame"),
            "blocked",
        ),
    ],
)
def test_a_kernel_sighting_is_the_event_the_dataclass_makes(flow, verdict):
    made = flow_event(flow, verdict, 5.0)  # without the dataclass' __init__ (the hot path)
    plain = Event(**{name: getattr(made, name) for name in Event.__dataclass_fields__})
    assert made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    assert asdict(made) == asdict(plain) and list(vars(made)) == list(vars(plain))
    assert replace(made, packets=3, last_ts=6.0) == replace(plain, packets=3, last_ts=6.0)
    assert made.detail is not flow_event(flow, verdict, 5.0).detail  # never a shared dict
    with pytest.raises(FrozenInstanceError):
        made.packets = 2  # type: ignore[misc]
    # folded: the update is the first event with the count and the last packet's time
    folder = Folder(window=2.0)
    first, _ = folder.feed(flow, verdict, 5.0)
    assert folder.feed(flow, verdict, 6.0) == (None, []) and folder.event_id(flow, verdict)
    assert folder.expire(9.0) == [replace(first, packets=2, last_ts=6.0)]


def test_open_flows_are_not_left_for_the_garbage_collector_to_rescan():
    folder = Folder(window=2.0)
    for port in range(100):
        folder.feed(Flow(4, "udp", "198.18.0.10", "198.18.5.5", 40000, port), "blocked", 1.0)
    gc.collect()  # plain tuples of plain values: no longer tracked (the outer one, after the
    gc.collect()  # inner one: by the next collection, before they could reach the oldest)
    assert not any(gc.is_tracked(v) for v in folder._open.values())
    assert not any(gc.is_tracked(k) for k in folder._open)


def _shape(events: list) -> list[tuple]:
    return [(e.kind, e.layer, e.dst_port, e.packets, e.last_ts, e.verdict) for e in events]


def test_a_read_batch_makes_the_events_one_by_one_handling_makes():
    """`handle_many` (the reader's path: one batch to the bus) against `handle` per message:
    the same events, fold updates of evicted flows in their place, the same counts."""
    bodies = [nflog(ipv4(6, tcp(40000 + i % 2)), seq=i) for i in range(9)]  # two flows
    bodies += [b"\x02\x00", nflog(ipv4(17, tcp(5, 53)), prefix=b"someone-else\0", seq=9)]
    bodies += [nflog(ipv4(6, tcp(40000 + i)), seq=10 + i) for i in range(5, 8)]
    one, got = _monitor()
    one.folder = Folder(window=2.0, max_flows=3)  # so flows are evicted, with updates
    for body in bodies:
        one.handle(body, 1.0)
    batches: list[list] = []
    policy = SimpleNamespace(nflog_group=1, monitor=MonitorSettings(fold_window=2.0))
    many = Monitor(policy, lambda e: pytest.fail(f"emitted alone: {e}"), emit_many=batches.append)
    many.folder = Folder(window=2.0, max_flows=3)
    many.handle_many(bodies, 1.0)
    assert len(batches) == 1 and _shape(batches[0]) == _shape(got)
    # the two folded flows' updates (evicted by the size cap) are in it, in their place
    assert [e.packets for e in got if e.last_ts is not None] == [4, 5]  # least recent first
    assert many.counts == one.counts and one.counts["malformed"] == 1
