"""Ground truth for long-lived flows: a TCP and a UDP server on one port that acknowledge every
chunk and datagram and keep the connection open. Counts what arrived (chunks, datagrams,
bytes) in a JSON file rewritten on every change. Prints "ready"; exits after --seconds."""

import argparse
import json
import os
import selectors
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    sel = selectors.DefaultSelector()
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.bind(("::", args.port))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", args.port))
    sel.register(tcp, selectors.EVENT_READ, "listen")
    sel.register(udp, selectors.EVENT_READ, "udp")
    counts = {"tcp_chunks": 0, "tcp_bytes": 0, "udp_datagrams": 0, "udp_bytes": 0, "accepted": 0}

    def write() -> None:
        with open(args.out + ".tmp", "w") as f:
            json.dump(counts, f)
        os.replace(args.out + ".tmp", args.out)

    write()
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            if key.data == "listen":
                conn, _ = sock.accept()
                counts["accepted"] += 1
                sel.register(conn, selectors.EVENT_READ, "conn")
            elif key.data == "udp":
                data, peer = sock.recvfrom(2048)
                counts["udp_datagrams"] += 1
                counts["udp_bytes"] += len(data)
                sock.sendto(b"ack", peer)
            else:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    continue
                counts["tcp_chunks"] += 1
                counts["tcp_bytes"] += len(data)
                try:
                    sock.sendall(b"ack")
                except OSError:
                    pass
            write()


if __name__ == "__main__":
    main()
