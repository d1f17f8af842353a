"""Frames logged by the netdev egress table (NFLOG family NFPROTO_NETDEV): the payload starts
at the Ethernet header. IP frames (hand-built ones, and MLD reports naming
other groups) become the same flows as packets logged by iptables, with `link` "netdev" so a
report can tell the layers apart; ARP names the address it asks for; any
other ethertype is a flow of its own. Pure; bad input raises `Malformed`."""

from __future__ import annotations

import ipaddress
import struct

from sentinel.detect.packets import Flow, Malformed, parse_ip

NFPROTO_NETDEV = 5
ETH_HEADER = 14
VLAN_TAGS = (0x8100, 0x88A8)


def parse_frame(frame: bytes) -> Flow:
    if len(frame) < ETH_HEADER:
        raise Malformed("short Ethernet header")
    ethertype, offset = struct.unpack_from("!H", frame, 12)[0], ETH_HEADER
    for _ in range(2):  # at most two VLAN tags (QinQ)
        if ethertype not in VLAN_TAGS:
            break
        if len(frame) < offset + 4:
            raise Malformed("short VLAN tag")
        ethertype, offset = struct.unpack_from("!H", frame, offset + 2)[0], offset + 4
    body = frame[offset:]
    if ethertype in (0x0800, 0x86DD):
        flow = parse_ip(body)
        groups = _mld_groups(body) if flow.protocol == "icmpv6" else None
        if groups:  # what a report carries is the groups it names: the first is its "dst"
            return flow._replace(dst_ip=groups[1][0], link="mld", groups=groups)
        return flow._replace(link="netdev")
    if ethertype == 0x0806:
        return _arp(body, frame)
    return Flow(4, f"ether-0x{ethertype:04x}", _mac(frame[6:12]), _mac(frame[0:6]), link="frame")


def _mld_groups(p: bytes) -> tuple[int, tuple[str, ...]] | None:
    """(records, groups) an MLDv1 (131, 132) or MLDv2 (143) report names, or None. Only the
    first 128 bytes are logged (the monitor's copy range), so at most two MLDv2 groups are
    seen; `records` is the report's own count."""
    nxt, off = p[6], 40
    if nxt == 0 and len(p) >= 42:  # hop-by-hop (router alert)
        nxt, off = p[40], 40 + (p[41] + 1) * 8
    if nxt != 58 or len(p) < off + 24:
        return None
    if p[off] in (131, 132):
        return 1, (str(ipaddress.IPv6Address(p[off + 8 : off + 24])),)
    if p[off] != 143:
        return None
    records, groups, at = struct.unpack_from("!H", p, off + 6)[0], [], off + 8
    for _ in range(min(records, 64)):
        if len(p) < at + 20:
            break
        groups.append(str(ipaddress.IPv6Address(p[at + 4 : at + 20])))
        at += 20 + p[at + 1] * 4 + struct.unpack_from("!H", p, at + 2)[0] * 16
    return (records, tuple(groups)) if groups else None


def _arp(body: bytes, frame: bytes) -> Flow:
    if len(body) < 28:
        raise Malformed("short ARP body")
    op = struct.unpack_from("!H", body, 6)[0]
    sender, target = ipaddress.IPv4Address(body[14:18]), ipaddress.IPv4Address(body[24:28])
    return Flow(4, "arp", str(sender), str(target), icmp_type=op, link="arp")


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
