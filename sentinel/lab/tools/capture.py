"""Ground truth at a host: every frame that arrives on its eth0 from one source MAC, read from
an AF_PACKET socket (so ARP, MLD and frames built by hand count too, not only IP to one of its
addresses). Prints "ready"; exits after --seconds or on SIGTERM, then writes a JSON summary
to --out: frames per ethertype, and which --find markers appeared in any frame."""

import argparse
import json
import os
import signal
import socket
import time

ETH_P_ALL = 0x0003


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mac", help="count frames whose source MAC is this")
    parser.add_argument("--out", required=True)
    parser.add_argument("--find", action="append", default=[], help="a marker to look for")
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    src = bytes.fromhex(args.mac.replace(":", ""))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind(("eth0", 0))
    sock.settimeout(0.2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    by_type: dict[str, int] = {}
    found = {m: 0 for m in args.find}
    icmp6: dict[str, int] = {}
    arp: dict[str, int] = {}  # ARP frames per target address
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    while not stop and time.monotonic() < deadline:
        try:
            frame, addr = sock.recvfrom(65535)
        except (TimeoutError, InterruptedError):
            continue
        if addr[2] == socket.PACKET_OUTGOING or frame[6:12] != src:
            continue
        kind = f"0x{int.from_bytes(frame[12:14], 'big'):04x}"
        by_type[kind] = by_type.get(kind, 0) + 1
        if kind == "0x86dd" and len(frame) > 55:
            nxt, off = frame[20], 54
            if nxt == 0:  # hop-by-hop (MLD carries a router alert)
                nxt, off = frame[54], 54 + (frame[55] + 1) * 8
            if nxt == 58 and len(frame) > off:
                icmp6[str(frame[off])] = icmp6.get(str(frame[off]), 0) + 1
        if kind == "0x0806" and len(frame) >= 42:
            target = socket.inet_ntoa(frame[38:42])
            arp[target] = arp.get(target, 0) + 1
        for marker in found:
            raw = bytes.fromhex(marker[4:]) if marker.startswith("hex:") else marker.encode()
            if raw in frame:
                found[marker] += 1
    summary = {"frames": sum(by_type.values()), "by_ethertype": by_type, "icmpv6_types": icmp6}
    summary["arp_targets"] = arp
    summary["found"] = found
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
