"""The netdev egress table (issue 13): what it catches and what it costs per packet.

Run as root: `python bench/bench_netdev.py [--packets N] [--repeat R]`. Two namespaces this
script creates (unique prefix) and deletes, linked by a veth on 198.18.0.0/24; traffic only
between them. Per run, in the app namespace: the sentinel ruleset is applied with the netdev
table ("netdev") or without it ("none", the baseline), N allowlisted UDP datagrams go through
the IP stack (timed: µs per packet, and the whole process), then 100 hand-built AF_PACKET
UDP frames go out normally and 100 with PACKET_QDISC_BYPASS; the peer's own INPUT counter says
how many arrived. Prints figures and the ratio netdev/none from the same run; not a test.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

FRAMES = 100
POLICY = "version: 1\nallow:\n  - {name: peer, host: 198.18.0.2, ports: [9000], protocol: udp}\n"


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120).stdout


def _csum(b: bytes) -> int:
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF


def _frame(dst_mac: bytes, src_mac: bytes, sport: int) -> bytes:
    body = struct.pack("!HHHH", sport, 9001, 12, 0) + b"l2!!"
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0,
        socket.inet_aton("198.18.0.1"), socket.inet_aton("198.18.0.2"),
    )  # fmt: skip
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return dst_mac + src_mac + b"\x08\x00" + hdr + body


def inner(mode: str, packets: int, peer_mac: str) -> None:
    """In the app namespace: apply, time the stack path, send AF_PACKET frames."""
    from sentinel.enforce import netfilter
    from sentinel.enforce.netdev import read_link
    from sentinel.enforce.render import render_rules
    from sentinel.policy.load import parse_policy

    netfilter.apply(
        render_rules(parse_policy(POLICY), {}, read_link() if mode == "netdev" else None)
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 32
    start = time.perf_counter()
    for _ in range(packets):  # bounded: `packets` datagrams
        sock.sendto(payload, ("198.18.0.2", 9000))
    per_packet_us = (time.perf_counter() - start) / packets * 1e6
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    raw.bind(("eth0", 0))
    me = bytes.fromhex(Path("/sys/class/net/eth0/address").read_text().strip().replace(":", ""))
    dst = bytes.fromhex(peer_mac.replace(":", ""))
    refused = {"normal": 0, "qdisc_bypass": 0}
    for kind in refused:
        if kind == "qdisc_bypass":
            raw.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
        for i in range(FRAMES):
            try:
                raw.send(_frame(dst, me, 30000 + i))
            except OSError:
                refused[kind] += 1
        time.sleep(0.2)  # let the peer count before the next batch
    print(json.dumps({"per_packet_us": per_packet_us, "refused": refused}))


def measure(mode: str, packets: int) -> dict:
    prefix = f"snd{secrets.token_hex(3)}"
    app, peer = f"{prefix}-app", f"{prefix}-peer"
    try:
        sh("ip", "netns", "add", app)
        sh("ip", "netns", "add", peer)
        sh("ip", "-n", app, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", peer)  # fmt: skip
        for ns, addr in ((app, "198.18.0.1/24"), (peer, "198.18.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", peer, "iptables-nft", "-A", "INPUT", "-p", "udp", "--dport",
           "9001", "-m", "comment", "--comment", "frames")  # fmt: skip
        peer_mac = sh("ip", "netns", "exec", peer, "cat", "/sys/class/net/eth0/address").strip()
        start = time.perf_counter()
        out = sh("ip", "netns", "exec", app, sys.executable, __file__, "--inner", mode,
                 str(packets), peer_mac)  # fmt: skip
        whole = time.perf_counter() - start
        counters = sh("ip", "netns", "exec", peer, "iptables-nft", "-L", "INPUT", "-v", "-n", "-x")
        arrived = sum(int(x.split()[0]) for x in counters.splitlines() if "frames" in x)
        return {**json.loads(out), "whole_s": whole, "arrived": arrived}
    finally:
        for ns in (app, peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"none": [], "netdev": []}
    for _ in range(args.repeat):  # interleaved, so both see the same machine load
        for mode in runs:
            runs[mode].append(measure(mode, args.packets))
    print(f"{'mode':>7} {'us/packet (median)':>19} {'whole process s':>16} "
          f"{'AF_PACKET frames arrived (of 2x' + str(FRAMES) + ')':>38}")  # fmt: skip
    med = {}
    for mode, rs in runs.items():
        med[mode] = statistics.median(r["per_packet_us"] for r in rs)
        whole = statistics.median(r["whole_s"] for r in rs)
        arrived = [r["arrived"] for r in rs]
        refused = rs[-1]["refused"]
        print(f"{mode:>7} {med[mode]:>19.3f} {whole:>16.2f} {str(arrived):>22} refused {refused}")
    ratio = med["netdev"] / med["none"]
    print(f"\nper-packet ratio netdev/none: {ratio:.3f}x over {args.repeat} runs of {args.packets}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--inner":
        inner(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        main()
