"""Frames logged by the netdev egress table (NFLOG family NFPROTO_NETDEV): the payload starts
at the Ethernet header. IP frames (hand-built ones, and MLD reports naming
other groups) become the same flows as packets logged by iptables, with `link` "netdev" so a
report can tell the layers apart; ARP names the address it asks for; any
other ethertype is a flow of its own. Pure; bad input raises `Malformed`."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace

from sentinel.detect.nflog import Flow, Malformed, parse_ip

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
        return replace(parse_ip(body), link="netdev")
    if ethertype == 0x0806:
        return _arp(body, frame)
    return Flow(4, f"ether-0x{ethertype:04x}", _mac(frame[6:12]), _mac(frame[0:6]), link="frame")


def _arp(body: bytes, frame: bytes) -> Flow:
    if len(body) < 28:
        raise Malformed("short ARP body")
    op = struct.unpack_from("!H", body, 6)[0]
    sender, target = ipaddress.IPv4Address(body[14:18]), ipaddress.IPv4Address(body[24:28])
    return Flow(4, "arp", str(sender), str(target), icmp_type=op, link="arp")


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
