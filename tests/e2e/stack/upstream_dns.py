"""The suite's upstream DNS server (dockerd's --dns): the project's test DNS server's answers,
plus a log of every query it receives (one JSON line: time, proto, source, name, type), so a
test can tell whether a name ever reached the upstream.

upstream_dns.py RECORDS.json LOG.jsonl ADDRESS PORT --seconds S
"""

import argparse
import json
import socket
import threading
import time

import dns.message
import dns.rdatatype

from sentinel.lab.tools.dnsserver import Records, answer

lock = threading.Lock()


def log(path: str, proto: str, peer, wire: bytes) -> None:
    try:
        q = dns.message.from_wire(wire).question[0]
        name, rdtype = q.name.to_text(), dns.rdatatype.to_text(q.rdtype)
    except Exception:
        name, rdtype = "?", "?"
    line = json.dumps(
        {"t": time.time(), "proto": proto, "src": peer[0], "name": name, "type": rdtype}
    )
    with lock, open(path, "a") as f:
        f.write(line + "\n")


def serve_tcp(records: Records, logpath: str, conn: socket.socket, peer) -> None:
    conn.settimeout(5)
    try:
        while True:
            head = conn.recv(2)
            if len(head) < 2:
                return
            size = int.from_bytes(head, "big")
            wire = b""
            while len(wire) < size:
                chunk = conn.recv(size - len(wire))
                if not chunk:
                    return
                wire += chunk
            log(logpath, "tcp", peer, wire)
            out = answer(records, wire)
            conn.sendall(len(out).to_bytes(2, "big") + out)
    except Exception:
        pass
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("records")
    parser.add_argument("log")
    parser.add_argument("address")
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=3600)
    args = parser.parse_args()
    records = Records(args.records)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.address, args.port))
    udp.settimeout(0.5)
    tcp = socket.create_server((args.address, args.port))
    tcp.settimeout(0.5)
    deadline = time.monotonic() + args.seconds

    def accept_loop() -> None:
        while time.monotonic() < deadline:
            try:
                conn, peer = tcp.accept()
            except TimeoutError:
                continue
            threading.Thread(
                target=serve_tcp, args=(records, args.log, conn, peer), daemon=True
            ).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    print("ready", flush=True)
    while time.monotonic() < deadline:
        try:
            wire, peer = udp.recvfrom(4096)
        except TimeoutError:
            continue
        log(args.log, "udp", peer, wire)
        try:
            udp.sendto(answer(records, wire), peer)
        except Exception:  # a malformed query must not stop the test server
            continue


if __name__ == "__main__":
    main()
