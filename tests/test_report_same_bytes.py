"""`sentinel report` prints, byte for byte, what the tree before the start-up cuts printed
(tests/data/report_same_bytes.json, written by that tree with this same test), over a
realistic store and the real kernel state of an applied ruleset: heartbeats with a gap, guard
heartbeats and drops, kernel counter readings, attempts of every layer (joined guard and
kernel sightings, audited calls), DNS drops, a monitor loss, shed rows, and set counters in
the kernel (a few hundred entries, several dump chunks, most idle).

Normalised only where a run must differ: the generation time, and the ruleset hash (the
namespace's own device names are part of it; the kernel's must equal the applied one).
Regenerate the file (only when the report is meant to change) with
SENTINEL_WRITE_GOLDEN=1 and the tree whose output is the reference."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON
from sentinel.store import events as ev
from sentinel.store.events import Event

pytestmark = pytest.mark.netns

GOLDEN = Path(__file__).parent / "data" / "report_same_bytes.json"
FAST = "from sentinel.entry import main; import sys; sys.argv[0] = 'sentinel'; main()"
UNTIL = 4_000_000_000.0  # fixed, and after the kernel's reading: it joins the window
SINCE = UNTIL - 600
APPLIED_AT = SINCE - 1800
ENTRIES = 150  # x 2 ports: 300 set entries, several netlink chunks, more than the listing


def policy_text() -> str:
    rows = [f"  - {{name: e{i}, cidr: 198.18.{i // 64}.{4 * (i % 64)}/30, ports: [443, 8443]}}"
            for i in range(ENTRIES)]  # fmt: skip
    rows.append("  - {name: v6, cidr: '2001:db8:5::/64', ports: [443]}")
    return "version: 1\nmode: enforce\nallow:\n" + "\n".join(rows) + "\n"


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def store_events(sha: str) -> list[Event]:
    out: list[Event] = []
    n = iter(range(1, 100_000))

    def add(**kw) -> None:
        out.append(Event(id=_id(next(n)), **kw))

    for i in range(0, 720, 5):  # monitor heartbeats from 2 min before the window, a 60 s gap
        t = SINCE - 120 + i
        if SINCE + 200 <= t < SINCE + 260:
            continue
        stats = {"lost": int(t > SINCE + 300), "overruns": 0, "malformed": 0}
        add(layer="sentinel", kind="monitor_heartbeat", verdict="info", ts=t, pid=4242,
            detail={"state": "ok", "interval": 5.0, "ruleset_sha256": sha, "mode": "enforce",
                    "pid": 4242, "started_at": SINCE - 3000, "stats": stats})  # fmt: skip
    for pid, step in ((501, 10), (502, 30)):  # two guarded processes, one dropping reports
        for i in range(0, 700, step):
            t = SINCE - 60 + i
            add(layer="guard", kind="guard_heartbeat", verdict="info", ts=t, pid=pid,
                exe="/usr/bin/python3",
                detail={"state": "active", "interval": float(step),
                        "sender": {"pid": pid, "uid": 1000, "verified": pid == 501},
                        "counters": {"dropped_total": i // 100 if pid == 502 else 0}})  # fmt: skip
    sets = [f"198.18.0.{4 * i}/30,tcp:443" for i in range(5)]
    for k, t in enumerate(range(int(SINCE) - 60, int(UNTIL), 60)):  # kernel counter readings
        add(layer="sentinel", kind="kernel_counters", verdict="info", ts=float(t),
            detail={"applied_at": APPLIED_AT, "nflog": {"4": 3 * k, "6": k},
                    "sets": {e: [k * (j + 1), 60 * k * (j + 1)] for j, e in enumerate(sets)},
                    "ruleset_sha256": sha})  # fmt: skip
    for i in range(40):  # attempts: kernel, DNS, guard (some joined), audited calls
        t = SINCE + 10 + 13 * i
        add(layer="netfilter", kind="egress_attempt", verdict="blocked", protocol="tcp",
            dst_ip=f"198.51.100.{i % 7}", dst_port=443 + i % 3, family=4, ts=t,
            src_ip="198.18.200.2", src_port=40000 + i, packets=1 + i % 4)  # fmt: skip
        if i % 5 == 0:
            add(layer="guard", kind="egress_attempt", verdict="blocked", protocol="tcp",
                dst_ip=f"198.51.100.{i % 7}", dst_port=443 + i % 3, dst_name=f"h{i % 7}.test",
                pid=501, exe="/usr/bin/python3", stack="app.py:12 in fetch", ts=t + 0.2)  # fmt: skip
        if i % 4 == 0:
            add(layer="dns", kind="egress_attempt", verdict="blocked", protocol="dns",
                dst_name=f"api{i % 3}.example.com", ts=t + 1, pid=777)  # fmt: skip
        if i % 9 == 0:
            add(layer="netfilter", kind="egress_attempt", verdict="audited", protocol="udp",
                dst_ip="2001:db8:9::1", dst_port=53, family=6, ts=t + 2)  # fmt: skip
    add(layer="guard", kind="egress_attempt", verdict="audited", protocol="tcp",
        dst_name="audited.example.com", dst_port=443, pid=502, exe="/usr/bin/python3",
        ts=SINCE + 33.3)  # fmt: skip
    add(layer="dns", kind="dns_dropped", verdict="info", ts=SINCE + 400,
        detail={"udp_dropped": 3, "tcp_refused": 1})  # fmt: skip
    add(layer="sentinel", kind="monitor_lost", verdict="blocked", ts=SINCE + 210,
        detail={"component": "nflog", "reason": "socket closed"})  # fmt: skip
    add(layer="sentinel", kind="monitor_lost", verdict="info", ts=SINCE + 255,
        detail={"component": "nflog", "resolved": True})  # fmt: skip
    add(
        layer="netfilter",
        kind="egress_attempt",
        verdict="blocked",
        protocol="tcp",
        dst_ip="198.51.100.99",
        dst_port=22,
        family=4,
        ts=SINCE - 30,
    )  # before the window
    return out


def build_state(topo, tmp_path: Path) -> None:
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    done = topo.run("app", PYTHON, "-c", FAST, "apply", "-p", str(policy), check=False)
    assert done.returncode == 0, done.stderr
    applied = json.loads((state / "applied.json").read_text())
    applied.update(applied_at=APPLIED_AT, policy="/golden/policy.yaml")
    (state / "applied.json").write_text(json.dumps(applied))
    for i, (packets, nbytes) in enumerate(((5, 300), (2**33, 2**40), (1, 0))):  # set counters
        entry = f"198.18.{i}.{8 * i}/30,tcp:8443"
        topo.run("app", "ipset", "-exist", "add", "sentinel-allow4", entry, "packets",
                 str(packets), "bytes", str(nbytes))  # fmt: skip
    conn = ev.connect(state / ev.DB_NAME)
    try:
        conn.execute("UPDATE events SET ts = ? WHERE kind = ?", (SINCE - 3600, ev.STORE_CREATED))
        ev.write_events(conn, store_events(applied["ruleset_sha256"]), {})
        conn.executemany(
            "INSERT INTO shed (ts, layer, count) VALUES (?, ?, ?)",
            [(SINCE + 100, "dns", 4), (SINCE + 500, "netfilter", 2), (SINCE - 5, "guard", 9)],
        )
    finally:
        conn.close()


def normalised(out: str, sha: str) -> str:
    data = json.loads(out)
    assert data["kernel_ruleset_sha256"] == data["ruleset_sha256"] == sha  # in sync
    out = re.sub(r'\n  "generated_at": "[^"]*",\n', '\n  "generated_at": "-",\n', out, count=1)
    return out.replace(sha, "<ruleset sha256>")


def test_the_report_prints_what_the_tree_before_printed(topo, tmp_path):
    build_state(topo, tmp_path)
    sha = json.loads((Path(os.environ["SENTINEL_STATE_DIR"]) / "applied.json").read_text())[
        "ruleset_sha256"
    ]
    args = ("report", "--since", str(SINCE), "--until", str(UNTIL), "--format", "json")
    env = {"SENTINEL_REDACT_KEY": "golden-key"}
    done = topo.run("app", PYTHON, "-c", FAST, *args, check=False, env=env)
    assert done.returncode in (0, 1), done.stderr
    got = normalised(done.stdout, sha)
    if os.environ.get("SENTINEL_WRITE_GOLDEN"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()
    data = json.loads(got)  # the scenario is what it says (not an empty report)
    assert data["netflow_summary"]["entries"] == 2 * ENTRIES + 1
    assert data["netflow_summary"]["left_out"] > 0 and data["attempts_total"] > 40
    assert data["coverage_detail"]["monitor_gaps"] and data["guard"]["dropped"]
