"""Set entries written by netlink (ipsetload) must leave the kernel exactly as `ipset restore`
would, and a refusal must be named and leave the live sets as they were.

Root tests: real sets in a fresh namespace, the netlink fill compared with `ipset restore`'s,
batches of more than one message, refusals, and a whole apply whose set fill the kernel
refuses. Rootless tests: the bytes of one entry, and entries the encoder must leave to
`ipset restore` (None before anything is sent)."""

from __future__ import annotations

import json
import socket
import struct
import sys

import pytest

from sentinel.enforce import ipsetload

ENTRIES4 = ["198.18.7.0/24,tcp:443", "198.18.0.10,tcp:5432", "198.18.0.11,udp:53"]
ENTRIES6 = ["2001:db8::/64,tcp:443", "2001:db8::10,udp:5432", "2001:db8:1::/48,tcp:1"]

FILL = """
import json, sys
from sentinel.enforce import ipsetload, netfilter
from sentinel.errors import SentinelError
sets, absent = json.loads(sys.argv[1]), sys.argv[2:]
create = "".join(f"create {n} hash:net,port family {'inet' if f == 4 else 'inet6'} counters\\n"
                 for n, (f, _e) in sets.items() if n not in absent)
netfilter._run(["ipset", "restore"], create)
out = {}
with ipsetload.Session.open() as session:
    for name, (family, entries) in sets.items():
        try:
            session.add(name, family, ipsetload.encode(name, family, entries))
            out[name] = "ok"
        except SentinelError as exc:
            out[name] = exc.message
print(json.dumps(out))
"""


def saved_entries(topo, name: str) -> list[str]:
    text = topo.run("app", "ipset", "save", name).stdout
    return sorted(line.split()[2] for line in text.splitlines() if line.startswith("add "))


def fill(topo, sets: dict, *absent: str) -> dict:
    done = topo.run("app", sys.executable, "-c", FILL, json.dumps(sets), *absent)
    return json.loads(done.stdout)


@pytest.mark.netns
def test_netlink_fill_equals_ipset_restore(topo):
    many = [f"198.19.{i // 256}.{i % 256},tcp:{p}" for i in range(1250) for p in (443, 8443)]
    got = fill(topo, {"n4": [4, ENTRIES4], "n6": [6, ENTRIES6], "big": [4, many]})
    assert got == {"n4": "ok", "n6": "ok", "big": "ok"}
    restore = "".join(
        f"create t{f} hash:net,port family {'inet' if f == 4 else 'inet6'} counters\n"
        + "".join(f"add t{f} {e}\n" for e in entries)
        for f, entries in ((4, ENTRIES4), (6, ENTRIES6))
    )
    topo.run("app", "sh", "-c", f"printf '%s' '{restore}' | ipset restore")
    assert saved_entries(topo, "n4") == saved_entries(topo, "t4") == sorted(ENTRIES4)
    assert saved_entries(topo, "n6") == saved_entries(topo, "t6") == sorted(ENTRIES6)
    assert len(many) > 2 * ipsetload.PER_MESSAGE  # three requests
    assert saved_entries(topo, "big") == sorted(many)


@pytest.mark.netns
def test_a_refused_entry_is_named(topo):
    got = fill(
        topo,
        {
            "dup": [4, ["198.18.0.10,tcp:5432", "198.18.0.10,tcp:5432"]],
            "missing-set-x": [4, ENTRIES4],
        },
        "missing-set-x",
    )
    assert got["dup"] == "ipset add to dup refused by the kernel: element already exists"
    assert got["missing-set-x"].startswith("ipset add to missing-set-x refused by the kernel")


APPLY_REFUSED = """
import ipaddress, json
from dataclasses import replace
from sentinel.enforce import netfilter
from sentinel.enforce.render import SET_NAME, IpSet, render_rules
from sentinel.errors import SentinelError
from sentinel.policy.load import load_policy
policy = load_policy("policies/mem0.yaml")
good = render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.2")]})
netfilter.apply(good)
before = netfilter.read_state()
# other rules (an NFLOG group) and another pin: the whole staged path, not a set update
moved = render_rules(replace(policy, nflog_group=7),
                     {"postgres": [ipaddress.ip_address("198.18.0.7")]})
# the kernel refuses the IPv6 set's fill (a duplicate), after the IPv4 staging copy is full
dup = IpSet(SET_NAME[6], 6, ("2001:db8::7,tcp:5432", "2001:db8::7,tcp:5432"))
bad = replace(moved, sets=tuple(dup if s.name == SET_NAME[6] else s for s in moved.sets))
try:
    netfilter.apply(bad)
    print(json.dumps({"raised": False}))
except SentinelError as exc:
    after = netfilter.read_state()
    print(json.dumps({"raised": True, "message": exc.message,
                      "same": after.sha256() == before.sha256() == good.sha256(),
                      "names": sorted(after.set_names)}))
"""


@pytest.mark.netns
def test_a_refused_set_fill_leaves_the_applied_ruleset(topo):
    out = json.loads(topo.run("app", sys.executable, "-c", APPLY_REFUSED).stdout)
    assert out["raised"] and "element already exists" in out["message"], out
    assert out["same"], f"the live sets and rules must be as before: {out}"
    assert not [n for n in out["names"] if n.endswith("-new")], out  # no staging copy left
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]  # the old pin is still allowed


def test_one_entry_in_the_layout_ipset_sends():
    (request,) = ipsetload.encode("s", 4, ["198.18.0.0/24,udp:53"])
    hdr = struct.Struct("=HH")
    top = hdr.pack(5, 1) + b"\x06\0\0\0" + hdr.pack(6, 2) + b"s\0\0\0"
    top += hdr.pack(8, 0x4000 | 9) + bytes(4)  # LINENO, required with an ADT list
    data = hdr.pack(40, 0x8000 | 7)
    data += hdr.pack(12, 0x8000 | 1) + hdr.pack(8, 0x4000 | 1) + socket.inet_aton("198.18.0.0")
    data += hdr.pack(5, 3) + b"\x18\0\0\0"  # CIDR 24
    data += hdr.pack(6, 0x4000 | 4) + b"\x00\x35\0\0"  # PORT 53, network order
    data += hdr.pack(5, 7) + b"\x11\0\0\0"  # PROTO UDP
    assert request == top + hdr.pack(4 + len(data), 0x8000 | 8) + data
    (host,) = ipsetload.encode("s", 6, ["2001:db8::1,tcp:443"])
    assert b"\x05\x00\x03\x00\x80" in host  # a host entry: CIDR 128


def test_requests_are_split_below_the_attribute_limit():
    entries = [f"2001:db8::{i:x},tcp:443" for i in range(2 * ipsetload.PER_MESSAGE + 1)]
    requests = ipsetload.encode("s", 6, entries)
    assert len(requests) == 3 and all(len(r) < 65535 for r in requests)


@pytest.mark.parametrize(
    "entry",
    [
        "198.18.0.0/33,tcp:1",
        "198.18.0.0/0,tcp:1",
        "198.18.0.0/+8,tcp:1",
        "198.18.0.1,icmp:1",
        "198.18.0.1,tcp:65536",
        "198.18.0.1,tcp:\u0661",  # a digit int() reads, not ASCII
        "198.18.0.1",
        "198.18.0.1,443",
        "2001:db8::1,tcp:1",  # IPv6 in an IPv4 set
        "198.18.0.01,tcp:1",
    ],
)
def test_entries_not_in_renders_form_are_left_to_ipset(entry):
    assert ipsetload.encode("s", 4, ["198.18.0.2,tcp:1", entry]) is None


BIG_APPLY = """
import ipaddress, json, subprocess
from dataclasses import replace
from sentinel.enforce import netfilter
from sentinel.enforce.render import SET_NAME, IpSet, render_rules
from sentinel.policy.load import load_policy
policy = load_policy("policies/mem0.yaml")
rs = render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.2")]})
many = tuple(sorted(f"198.19.{i // 256}.{i % 256},tcp:{p}" for i in range(2500) for p in (443, 8443)))
big = replace(rs, sets=tuple(IpSet(s.name, s.family, many) if s.name == SET_NAME[4] else s
                             for s in rs.sets))
state = netfilter.apply(big)
header = subprocess.run(["ipset", "list", "-t", SET_NAME[4]], capture_output=True, text=True)
print(json.dumps({"held": state.sha256() == big.sha256(), "header": header.stdout,
                  "names": sorted(netfilter.read_state().set_names)}))
"""


@pytest.mark.netns
def test_a_big_apply_is_staged_by_netlink_with_room_for_its_entries(topo):
    out = json.loads(topo.run("app", sys.executable, "-c", BIG_APPLY).stdout)
    assert out["held"], out  # the read back is exactly the 5,000 entries
    assert "hashsize 2048" in out["header"] and "Number of entries: 5000" in out["header"], out
    assert not [n for n in out["names"] if n.endswith("-new")], out


REFUSALS = """
import json
from sentinel.enforce import ipsetload, netfilter
from sentinel.errors import SentinelError
netfilter._run(["ipset", "restore"],
               "create small hash:net,port family inet maxelem 2 counters\\n"
               "create other hash:ip family inet\\n")
out = {}
with ipsetload.Session.open() as session:
    for what, call in (
        ("full", lambda: session.add("small", 4, ipsetload.encode("small", 4, [
            "198.18.0.1,tcp:1", "198.18.0.2,tcp:1", "198.18.0.3,tcp:1"]))),
        ("swap", lambda: session.swap("small", "other")),
        ("swap-missing", lambda: session.swap("small", "no-such-set")),
    ):
        try:
            call()
            out[what] = "ok"
        except SentinelError as exc:
            out[what] = exc.message
print(json.dumps(out))
"""


@pytest.mark.netns
def test_the_kernels_refusals_are_named_in_words(topo):
    """The kernel's own ipset error numbers (ip_set.h, ip_set_hash.h), in words: a full set, a
    swap of sets of different types, a swap with a set that does not exist."""
    got = json.loads(topo.run("app", sys.executable, "-c", REFUSALS).stdout)
    assert got["full"] == "ipset add to small refused by the kernel: set is full", got
    assert got["swap"] == (
        "ipset swap small other refused by the kernel: "
        "the sets cannot be swapped: their types do not match"
    ), got
    assert got["swap-missing"].startswith("ipset swap small no-such-set refused by the kernel: ")
    assert "Unknown error" not in got["swap-missing"], got


# A reader of the sets (`sentinel status` every 5 s as compose's healthcheck, the monitor's
# counter snapshot, `report`) holds each set for the time its dump spans several messages: the
# kernel refuses to swap or destroy a set while a dump of it is open (EBUSY). The holder below
# opens a dump of one big set, reads one message of it, waits, then reads the rest.
HOLD = """
import socket, struct, sys, time
name = sys.argv[1].encode() + b"\\0"
attr = lambda kind, value: struct.pack("=HH", 4 + len(value), kind) + value + bytes(-len(value) % 4)
body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attr(1, bytes([6])) + attr(2, name)
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
s.bind((0, 0))
s.send(struct.pack("=IHHII", 16 + len(body), (6 << 8) | 8, 0x301, 1, 0) + body)
s.recv(1 << 16)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
s.settimeout(5)
for _ in range(10000):
    if struct.unpack_from("=IH", s.recv(1 << 16))[1] == 3:  # NLMSG_DONE
        break
"""

APPLY_WHILE_READ = """
import ipaddress, json, subprocess, sys
from dataclasses import replace
from sentinel.enforce import netfilter
from sentinel.enforce.render import SET_NAME, IpSet, render_rules
from sentinel.errors import SentinelError
from sentinel.policy.load import load_policy
policy = load_policy("policies/mem0.yaml")
many = tuple(sorted(f"198.19.{i // 256}.{i % 256},tcp:443" for i in range(20000)))

def big(rs):
    return replace(rs, sets=tuple(IpSet(s.name, 4, many) if s.name == SET_NAME[4] else s
                                  for s in rs.sets))

good = big(render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.2")]}))
netfilter.apply(good)
moved = big(render_rules(replace(policy, nflog_group=7),  # other rules: the staged path
                         {"postgres": [ipaddress.ip_address("198.18.0.7")]}))
holder = subprocess.Popen([sys.executable, "-c", sys.argv[1], SET_NAME[4], "1.0"],
                          stdout=subprocess.PIPE, text=True)
try:
    assert holder.stdout.readline().strip() == "holding"
    try:
        state = netfilter.apply(moved)
        out = {"raised": None, "held": state.sha256() == moved.sha256()}
    except SentinelError as exc:
        out = {"raised": exc.message}
finally:
    holder.wait(timeout=30)
after = netfilter.read_state()
out["now"] = ("moved" if after.sha256() == moved.sha256() else
              "good" if after.sha256() == good.sha256() else "neither")
out["staging"] = sorted(n for n in after.set_names if n.endswith("-new"))
print(json.dumps(out))
"""


@pytest.mark.netns
def test_an_apply_waits_for_a_reader_of_the_sets(topo):
    """A full apply while a reader holds the live set open: the swap waits (bounded) for the
    reader, rather than failing the apply (or leaving the other family's set swapped)."""
    done = topo.run("app", sys.executable, "-c", APPLY_WHILE_READ, HOLD, timeout=120)
    out = json.loads(done.stdout)
    assert out["raised"] is None, out
    assert out["held"] and out["now"] == "moved" and not out["staging"], out


BUSY = """
import json, subprocess, sys
from sentinel.enforce import ipsetload, netfilter
from sentinel.errors import SentinelError
doc = "create a hash:net,port family inet counters\\ncreate b hash:net,port family inet counters\\n"
doc += "".join(f"add a 198.19.{i // 256}.{i % 256},tcp:443\\n" for i in range(20000))
netfilter._run(["ipset", "restore"], doc)
out = {}
with ipsetload.Session.open() as session:
    for what, call in (("swap", lambda: session.swap("a", "b")),
                       ("destroy", lambda: session.destroy("a"))):  # a: 20,000 entries
        holder = subprocess.Popen([sys.executable, "-c", sys.argv[1], "a", "0.5"],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "holding"
        try:
            call()
            out[what] = "ok"
        except SentinelError as exc:
            out[what] = exc.message
        holder.wait(timeout=30)
print(json.dumps(out))
"""


@pytest.mark.netns
def test_a_swap_or_destroy_of_a_set_being_read_is_retried(topo):
    got = json.loads(topo.run("app", sys.executable, "-c", BUSY, HOLD, timeout=120).stdout)
    assert got == {"swap": "ok", "destroy": "ok"}, got


TEARDOWN_WHILE_READ = """
import ipaddress, json, subprocess, sys
from dataclasses import replace
from sentinel.enforce import netfilter
from sentinel.enforce.render import OUR_SETS, SET_NAME, IpSet, render_rules
from sentinel.errors import SentinelError
from sentinel.policy.load import load_policy
policy = load_policy("policies/mem0.yaml")
many = tuple(sorted(f"198.19.{i // 256}.{i % 256},tcp:443" for i in range(20000)))
rs = render_rules(policy, {"postgres": [ipaddress.ip_address("198.18.0.2")]})
netfilter.apply(replace(rs, sets=tuple(IpSet(s.name, 4, many) if s.name == SET_NAME[4] else s
                                        for s in rs.sets)))
holder = subprocess.Popen([sys.executable, "-c", sys.argv[1], SET_NAME[4], "1.0"],
                          stdout=subprocess.PIPE, text=True)
try:
    assert holder.stdout.readline().strip() == "holding"
    try:
        out = {"raised": None, "found": netfilter.teardown("nft")}
    except SentinelError as exc:
        out = {"raised": exc.message}
finally:
    holder.wait(timeout=30)
names = set(subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout.split())
out["left"] = sorted(n for _f, n in OUR_SETS if n in names)
print(json.dumps(out))
"""


@pytest.mark.netns
def test_a_teardown_waits_for_a_reader_of_the_sets(topo):
    done = topo.run("app", sys.executable, "-c", TEARDOWN_WHILE_READ, HOLD, timeout=120)
    out = json.loads(done.stdout)
    assert out == {"raised": None, "found": True, "left": []}, out
