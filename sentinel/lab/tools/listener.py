"""A stand-in upstream: accepts TCP on the given ports (IPv4 and IPv6), answers 'ok NAME\\n'.

Bounded: exits after --seconds. Also answers UDP datagrams on the same ports.
"""

import argparse
import selectors
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("ports", type=int, nargs="+")
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    sel = selectors.DefaultSelector()
    for port in args.ports:
        for family, addr in ((socket.AF_INET6, "::"),):  # dual-stack socket covers IPv4 too
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            tcp.bind((addr, port))
            tcp.listen(128)
            sel.register(tcp, selectors.EVENT_READ, "tcp")
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            udp.bind((addr, port))
            sel.register(udp, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    reply = f"ok {args.name}\n".encode()
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            if key.data == "tcp":
                conn, _ = sock.accept()
                conn.settimeout(1)
                try:
                    conn.sendall(reply)
                except OSError:
                    pass
                sel.register(conn, selectors.EVENT_READ, "conn")
            elif key.data == "udp":
                data, peer = sock.recvfrom(2048)
                sock.sendto(reply, peer)
            else:  # client closed or sent data: close our side
                sel.unregister(sock)
                sock.close()


if __name__ == "__main__":
    main()
