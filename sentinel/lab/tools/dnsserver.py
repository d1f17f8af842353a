"""A small authoritative test DNS server with answers that can change while it runs.

dnsserver.py RECORDS.json PORT [--seconds S]

RECORDS.json: {"ttl": 5, "records": {"postgres": {"A": ["198.18.0.2"], "AAAA": [...]},
"www.example.test": {"CNAME": "postgres"}}}. The file is re-read when its mtime changes, so a
test changes an answer by rewriting it. Unknown names get NXDOMAIN. Listens on UDP and TCP,
IPv4 and IPv6 (dual-stack). Prints "ready" when listening; exits after --seconds.

--broken MODE makes it misbehave the way real servers and middleboxes do:
  drop-aaaa      AAAA questions are never answered (UDP or TCP)
  servfail-aaaa  AAAA questions get SERVFAIL
  truncate       every UDP answer is truncated (TC, no records): the client must use TCP
"""

import argparse
import json
import os
import selectors
import socket
import threading
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class Records:
    def __init__(self, path: str) -> None:
        self.path = path
        self.mtime = 0.0
        self.data: dict = {}
        self.lock = threading.Lock()

    def current(self) -> dict:
        with self.lock:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime != self.mtime:
                with open(self.path) as f:
                    self.data = json.load(f)
                self.mtime = mtime
            return self.data


BROKEN = ("drop-aaaa", "servfail-aaaa", "truncate")


def answer(records: Records, wire: bytes, broken: str = "", udp: bool = False) -> bytes | None:
    query = dns.message.from_wire(wire)
    reply = dns.message.make_response(query)
    aaaa = query.question[0].rdtype == dns.rdatatype.AAAA
    if broken == "drop-aaaa" and aaaa:
        return None
    if broken == "servfail-aaaa" and aaaa:
        reply.set_rcode(dns.rcode.SERVFAIL)
        return reply.to_wire()
    if broken == "truncate" and udp:
        reply.flags |= dns.flags.TC
        return reply.to_wire()
    reply.flags |= dns.flags.AA
    data = records.current()
    ttl = int(data.get("ttl", 5))
    table = {k.lower().rstrip("."): v for k, v in data.get("records", {}).items()}
    question = query.question[0]
    name = question.name
    for _ in range(8):  # follow CNAMEs inside our own data, like an authoritative server
        entry = table.get(name.to_text(omit_final_dot=True).lower())
        if entry is None:
            if not reply.answer:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            break
        if "CNAME" in entry:
            target = dns.name.from_text(entry["CNAME"])
            reply.answer.append(dns.rrset.from_text(name, ttl, "IN", "CNAME", target.to_text()))
            name = target
            continue
        rdtype = dns.rdatatype.to_text(question.rdtype)
        values = entry.get(rdtype, [])
        if values:
            reply.answer.append(dns.rrset.from_text_list(name, ttl, "IN", rdtype, values))
        break
    return reply.to_wire()


def serve_tcp(records: Records, conn: socket.socket, broken: str) -> None:
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
            out = answer(records, wire, broken)
            if out is None:
                continue
            conn.sendall(len(out).to_bytes(2, "big") + out)
    except OSError:
        pass
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("records")
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--broken", choices=BROKEN, default="")
    args = parser.parse_args()
    records = Records(args.records)
    sel = selectors.DefaultSelector()
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", args.port))
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.bind(("::", args.port))
    tcp.listen(64)
    sel.register(udp, selectors.EVENT_READ, "udp")
    sel.register(tcp, selectors.EVENT_READ, "tcp")
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            if key.data == "udp":
                wire, peer = udp.recvfrom(4096)
                try:
                    out = answer(records, wire, args.broken, udp=True)
                    if out is not None:
                        udp.sendto(out, peer)
                except Exception:  # a malformed query must not stop the test server
                    continue
            else:
                conn, _ = tcp.accept()
                client = (records, conn, args.broken)
                threading.Thread(target=serve_tcp, args=client, daemon=True).start()


if __name__ == "__main__":
    main()
