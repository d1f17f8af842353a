"""The outside world: owns the addresses that external names resolve to and counts every packet
that reaches it (ground truth). An AF_PACKET socket on eth0 counts each IPv4/IPv6 packet whose
destination is one of this container's own addresses, and each ARP request for one, by source;
TCP 80/443 and UDP 443 are also listened on, so anything that got through would be answered.
Counts are written to /tmp/outside.json (read with `docker exec`)."""

import json
import signal
import socket
import struct
import sys
import threading
import time

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
OWN = set(sys.argv[1:])
counts = {"ip_packets": 0, "arp_requests": 0, "by_source": {}, "samples": []}
lock = threading.Lock()


def dump() -> None:
    with open("/tmp/outside.json.part", "w") as f:
        json.dump(counts, f)
    import os

    os.replace("/tmp/outside.json.part", "/tmp/outside.json")


def sniff() -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind(("eth0", 0))
    while True:
        frame, addr = s.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        src = dst = None
        if ethertype == 0x0800 and len(frame) >= 34:
            src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
            kind = "ip_packets"
        elif ethertype == 0x86DD and len(frame) >= 54:
            src = socket.inet_ntop(socket.AF_INET6, frame[22:38])
            dst = socket.inet_ntop(socket.AF_INET6, frame[38:54])
            kind = "ip_packets"
        elif ethertype == 0x0806 and len(frame) >= 42 and frame[20:22] == b"\x00\x01":
            src, dst = socket.inet_ntoa(frame[28:32]), socket.inet_ntoa(frame[38:42])
            kind = "arp_requests"
        else:
            continue
        if dst not in OWN:
            continue
        with lock:
            counts[kind] += 1
            counts["by_source"][src] = counts["by_source"].get(src, 0) + 1
            if len(counts["samples"]) < 50:
                counts["samples"].append(
                    {"t": time.time(), "kind": kind, "src": src, "dst": dst, "len": len(frame)}
                )
            dump()


def tcp(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port))
    while True:
        conn, _ = srv.accept()
        conn.close()


def udp(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)


with lock:
    dump()
for target, arg in ((tcp, 80), (tcp, 443), (udp, 443)):
    threading.Thread(target=target, args=(arg,), daemon=True).start()
threading.Thread(target=sniff, daemon=True).start()
print("ready", flush=True)
signal.pause()
