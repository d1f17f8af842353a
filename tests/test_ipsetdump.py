"""The kernel's own set dump (ipsetdump) must read exactly what `ipset save` reads, or decline.

Root test: real sets in a fresh namespace, both readers compared (entries, counters, names).
Rootless tests: entries in the kernel's binary layout, and layouts the fast reading must refuse
(so `ipset save` decides)."""

from __future__ import annotations

import json
import socket
import struct
import sys

from sentinel.enforce import ipsetdump

COMPARE = """
import json
from sentinel.enforce import ipsetdump, netfilter
from sentinel.enforce.savetext import parse_sets, set_names
fast = ipsetdump.read()
saved = netfilter._run(["ipset", "save"])
sets, counters = parse_sets(saved)
def plain(sets, counters, names):
    return {"sets": {s.name: [s.family, list(s.entries)] for s in sets},
            "counters": sorted([n, e, p, b] for (n, e), (p, b) in counters.items()),
            "names": sorted(names)}
bare = ipsetdump.read(counters=False)
print(json.dumps({"fast": fast and plain(*fast), "text": plain(sets, counters, set_names(saved)),
                  "bare": bare and plain(*bare)}))
"""

SETS = """\
create sentinel-allow4 hash:net,port family inet maxelem 65536 counters
add sentinel-allow4 198.18.7.0/24,443
add sentinel-allow4 198.18.0.10,tcp:5432 packets 5 bytes 300
add sentinel-allow4 198.18.0.11,udp:53 packets 18446744073709551614 bytes 123456789012
create sentinel-allow6 hash:net,port family inet6 maxelem 65536 counters
add sentinel-allow6 2001:db8::/64,443
add sentinel-allow6 2001:db8::10,udp:5432 packets 7 bytes 9
create sentinel-held4 hash:net,port family inet maxelem 65536 counters
create sentinel-allow4-new hash:net,port family inet maxelem 65536 counters
add sentinel-allow4-new 198.18.9.9,tcp:1
create other hash:ip family inet
add other 198.18.1.1
"""


def compare(topo) -> dict:
    return json.loads(topo.run("app", sys.executable, "-c", COMPARE).stdout)


def test_the_dump_reads_what_ipset_save_reads(topo):
    topo.run("app", "sh", "-c", f"printf '%s' '{SETS}' | ipset restore")
    got = compare(topo)
    assert got["fast"] is not None, "the fast reading declined a plain set of ours"
    assert got["fast"] == got["text"]
    # without counters (an apply's read-backs): the same sets and names, no counters
    assert got["bare"] == {**got["fast"], "counters": []}
    assert got["fast"]["sets"]["sentinel-allow4"][1] == [
        "198.18.0.10,tcp:5432",
        "198.18.0.11,udp:53",
        "198.18.7.0/24,tcp:443",
    ]
    assert ["sentinel-allow4", "198.18.0.11,udp:53", 2**64 - 2, 123456789012] in got["fast"][
        "counters"
    ]
    assert "other" in got["fast"]["names"] and "sentinel-allow4-new" in got["fast"]["names"]


def test_a_set_of_ours_with_another_shape_is_left_to_ipset_save(topo):
    # a set of ours replaced by one of another type, and one with a nomatch entry
    topo.run("app", "ipset", "create", "sentinel-allow4", "hash:ip", "counters")
    topo.run("app", "ipset", "add", "sentinel-allow4", "198.18.0.10")
    assert compare(topo)["fast"] is None
    topo.run("app", "ipset", "destroy", "sentinel-allow4")
    topo.run("app", "ipset", "create", "sentinel-allow6", "hash:net,port", "family", "inet6")
    topo.run("app", "ipset", "add", "sentinel-allow6", "2001:db8::/64,443")  # no counters
    assert compare(topo)["fast"] is None
    topo.run("app", "ipset", "destroy", "sentinel-allow6")
    topo.run("app", "ipset", "create", "sentinel-held4", "hash:net,port", "counters")
    topo.run("app", "ipset", "add", "sentinel-held4", "198.18.0.0/24,443", "nomatch")
    got = compare(topo)
    assert got["fast"] is None and got["text"]["sets"]["sentinel-held4"][1] == [
        "198.18.0.0/24,tcp:443"
    ]


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def entry(
    addr: str, cidr: int, port: int, proto: int, packets: int, nbytes: int, flags: bytes = b""
) -> bytes:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    inner = attr(1 if family == socket.AF_INET else 2, socket.inet_pton(family, addr))
    return attr(
        0x8000 | 7,
        attr(0x8000 | 1, inner)
        + attr(0x4000 | 4, struct.pack(">H", port))
        + attr(3, bytes([cidr]))
        + attr(7, bytes([proto]))
        + flags
        + attr(0x4000 | 24, struct.pack(">Q", nbytes))
        + attr(0x4000 | 25, struct.pack(">Q", packets)),
    )


def test_entries_in_the_kernels_layout():
    out, counters = [], ipsetdump.Counters()
    adt = entry("198.18.0.10", 32, 5432, 6, 5, 300) + entry("10.20.0.0", 16, 53, 17, 0, 0)
    assert ipsetdump._entries(adt, 4, "sentinel-allow4", out, counters)
    assert out == ["198.18.0.10,tcp:5432", "10.20.0.0/16,udp:53"]
    out6: list[str] = []
    big = 2**64 - 2
    assert ipsetdump._entries(entry("2001:db8::", 64, 443, 6, big, 2), 6, "s6", out6, counters)
    assert out6 == ["2001:db8::/64,tcp:443"]
    # the counters, decoded on first use, in the dump's order
    assert dict(counters) == {
        ("sentinel-allow4", "198.18.0.10,tcp:5432"): (5, 300),
        ("sentinel-allow4", "10.20.0.0/16,udp:53"): (0, 0),
        ("s6", "2001:db8::/64,tcp:443"): (big, 2),
    }
    assert list(counters)[0] == ("sentinel-allow4", "198.18.0.10,tcp:5432") and len(counters) == 3
    held = ipsetdump.Counters()  # the same entry in two sets: by entry, the later set's
    for name, packets in (("sentinel-allow4", 5), ("sentinel-held4", 7)):
        assert ipsetdump._entries(entry("198.18.0.10", 32, 5432, 6, packets, 1), 4, name, [], held)
    assert held.by_entry() == {e: pb for (_set, e), pb in held.items()}
    assert held.by_entry() == {"198.18.0.10,tcp:5432": (7, 1)} and len(held) == 2


def test_layouts_the_fast_reading_refuses():
    good = entry("198.18.0.10", 32, 5432, 6, 5, 300)
    icmp = entry("198.18.0.10", 32, 0, 1, 5, 300)  # ipset prints icmp entries its own way
    nomatch = attr(0x4000 | 8, struct.pack(">I", 4))  # IPSET_FLAG_NOMATCH
    flagged = entry("198.18.0.10", 32, 5432, 6, 5, 300, flags=nomatch) + good
    short = good[:-12]  # no packets counter
    for adt in (icmp, flagged, flagged[: len(good)], short, good + b"\0" * 4):
        assert not ipsetdump._entries(adt, 4, "sentinel-allow4", [], ipsetdump.Counters())


def test_read_keeps_ours_and_declines_what_it_cannot_read_exactly(monkeypatch):
    ours = {
        2: b"sentinel-allow4\0",
        3: b"hash:net,port\0",
        8: entry("198.18.0.10", 32, 53, 17, 1, 2),
    }
    more = {2: b"sentinel-allow4\0", 8: entry("198.18.0.9", 32, 53, 17, 0, 0)}  # next chunk
    foreign = {2: b"other\0", 3: b"hash:ip\0", 8: b"\0" * 12}
    monkeypatch.setattr(ipsetdump, "_dump", lambda: [ours, more, foreign])
    sets, counters, names = ipsetdump.read()
    assert [(s.name, s.entries) for s in sets] == [
        ("sentinel-allow4", ("198.18.0.10,udp:53", "198.18.0.9,udp:53"))
    ]
    assert counters[("sentinel-allow4", "198.18.0.10,udp:53")] == (1, 2)
    assert names == {"sentinel-allow4", "other"}
    retyped = {**ours, 3: b"hash:ip\0"}  # a set of ours of another type: ipset save decides
    monkeypatch.setattr(ipsetdump, "_dump", lambda: [retyped])
    assert ipsetdump.read() is None

    def refused():
        raise OSError("ipset dump refused")  # no CAP_NET_ADMIN, an interrupted dump, ...

    monkeypatch.setattr(ipsetdump, "_dump", refused)
    assert ipsetdump.read() is None


def test_idle_chunks_read_zero_and_any_counter_word_makes_a_chunk_decoded():
    """A chunk whose entries all read 0 is not decoded (`_idle`); a single non-zero byte in
    any word of any entry's BYTES or PACKETS is read exactly, in either family."""
    for family, base, full in ((4, "198.18.0.", 32), (6, "2001:db8::", 128)):
        addrs = [f"{base}{i}" for i in range(1, 6)]
        idle = b"".join(entry(a, full, 443, 6, 0, 0) for a in addrs)
        names = [f"{a},tcp:443" for a in addrs]
        assert ipsetdump._idle(idle, family)
        out, counters = [], ipsetdump.Counters()
        assert ipsetdump._entries(idle, family, "s", out, counters) and out == names
        assert dict(counters) == {("s", e): (0, 0) for e in names}
        assert counters.by_entry() == dict.fromkeys(names, (0, 0))
        for at in (0, 2, 4):
            for packets, nbytes in ((1, 0), (0, 1), (2**32, 0), (0, 2**40), (2**63, 2**64 - 1)):
                pbs = [(packets, nbytes) if i == at else (0, 0) for i in range(5)]
                adt = b"".join(
                    entry(a, full, 443, 6, *pb) for a, pb in zip(addrs, pbs, strict=True)
                )
                assert not ipsetdump._idle(adt, family)
                counters = ipsetdump.Counters()
                assert ipsetdump._entries(adt, family, "s", [], counters)
                assert counters.by_entry() == dict(zip(names, pbs, strict=True))
                assert dict(counters) == {("s", e): pb for e, pb in zip(names, pbs, strict=True)}
