"""`policy suggest` and `explain` against a real audit run: `sentinel run` (mode audit) in the
app namespace, a real test DNS server upstream (a CNAME chain for the external name), workload
traffic by name, by IPv6 literal and to an allowlisted upstream, a bypass canary running."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON, Topology
from sentinel.policy.load import parse_policy
from tests.conftest import RECORDS, RunningSentinel, wait_for

pytestmark = pytest.mark.netns

POLICY = """\
version: 1
mode: audit
allow:
  - {name: postgres, host: postgres, ports: [5432], protocol: tcp}
  - {name: neo4j, host: neo4j, ports: [7474, 7687], protocol: tcp}
dns: {min_ttl: 30s, max_ttl: 1h, stale_grace: 10s}
canary: {target: 198.18.0.99, port: 443, interval: 1s}
"""

TCP = """
import json, socket
def tcp(host, port):
    try:
        with socket.create_connection((host, port), timeout=3):
            return "ok"
    except OSError as exc:
        return type(exc).__name__
"""  # the outcome of one connect, as the app would make it
WORKLOAD = (
    TCP
    + """
print(json.dumps({"api": tcp("api.example.com", 443), "v6": tcp("2001:db8::5", 443),
                  "pg": tcp("postgres", 5432), "pg_again": tcp("postgres", 5432)}))
"""
)


def _stored(db: Path, sql: str, *args: object) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _digest(directory: Path) -> dict[str, str]:
    """Every file of the state directory by content. SQLite's shared-memory index (-shm) and
    an empty write-ahead log (-wal) are what any reader of a WAL database leaves; an events.db
    with content in its -wal would show as a change."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
        and not p.name.endswith("-shm")
        and not (p.name.endswith("-wal") and p.stat().st_size == 0)
    }


@pytest.fixture
def audited(topo: Topology, tmp_path: Path):
    """An audit run with workload traffic, stopped (its rules and store stay)."""
    records = {
        **RECORDS,
        "api.example.com": {"CNAME": "edge.cdn.test"},
        "edge.cdn.test": {"A": ["198.18.5.5"]},
    }
    topo.start_dns_server(records, tmp_path, ttl=60)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    sentinel = RunningSentinel(topo, policy)
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    db = state / "events.db"
    out = json.loads(topo.run("app", PYTHON, "-c", WORKLOAD, timeout=60).stdout)
    assert out == {"api": "ok", "v6": "ok", "pg": "ok", "pg_again": "ok"}, out  # audit: all go
    stored = wait_for(
        lambda: (
            {ip for (ip,) in _stored(db, "SELECT dst_ip FROM events WHERE layer = 'netfilter'")}
            >= {"198.18.5.5", "2001:db8::5"}
            and _stored(db, "SELECT 1 FROM events WHERE layer = 'canary'")
        ),
        timeout=20,
    )
    assert stored, sentinel.log()
    # the kernel logged the canary's probes with its mark: recorded as canary, never an attempt
    canary_ips = (
        "SELECT DISTINCT layer FROM events WHERE dst_ip = '198.18.0.99' AND kind LIKE 'canary%'"
    )
    assert wait_for(
        lambda: (
            _stored(db, canary_ips)
            and not _stored(
                db, "SELECT 1 FROM events WHERE layer = 'netfilter' AND dst_ip = '198.18.0.99'"
            )
        ),
        timeout=10,
    ), _stored(
        db, "SELECT layer, kind, protocol, dst_port FROM events WHERE dst_ip = '198.18.0.99'"
    )
    assert _stored(db, "SELECT 1 FROM events WHERE kind = 'canary_probe'"), "no NFLOG canary probe"
    assert sentinel.stop() == 0  # SIGTERM: the rules (and their counters) stay in force
    return topo, policy, state


def test_suggest_learns_names_addresses_and_used_upstreams_read_only(audited, tmp_path):
    topo, policy, state = audited
    before = _digest(state)
    out = topo.sentinel("policy", "suggest", "--last", "1h")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    print(text)  # shown with -rP: what a user sees
    suggested = parse_policy(text, "suggested.yaml")
    by_name = {a.name: a for a in suggested.allow}
    # the external name, CNAME collapsed onto the asked name, with the port it was used on
    api = by_name["api-example-com"]
    assert (api.host, api.ports, api.protocol) == ("api.example.com", (443,), "tcp")
    assert "edge.cdn.test" not in {a.host for a in suggested.allow}
    assert "#   addresses seen: 198.18.5.5" in text
    # the IPv6 literal: one address, never a range, commented as nameless
    v6 = next(a for a in suggested.allow if a.cidr is not None)
    assert str(v6.cidr) == "2001:db8::5/128" and v6.ports == (443,)
    assert "2001:db8::5: no name was seen for this address" in text
    # the allowlisted upstream the kernel counted (never logged) is carried over
    assert by_name["postgres"].host == "postgres"
    assert "postgres: in force and used" in text
    assert "neo4j" not in by_name  # nothing went there
    # never the canary, loopback, or the whole internet
    for never in ("198.18.0.99", "127.0.0.1", "0.0.0.0/0", "::/0"):
        assert all(never not in (str(a.cidr), a.host) for a in suggested.allow), never
    assert [(t.to, t.expect) for t in suggested.tests] == [
        ("postgres:5432", "allow"),
        ("api.example.com:443", "allow"),
        ("[2001:db8::5]:443", "allow"),
        ("198.18.0.99:443", "deny"),  # the policy's canary address
    ]
    path = tmp_path / "suggested.yaml"
    path.write_text(text)
    check = topo.sentinel("check", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert _digest(state) == before  # read-only: the store and the state are untouched

    diff = topo.sentinel("policy", "suggest", "--last", "1h", "--diff", str(policy))
    assert diff.returncode == 0, diff.stderr
    print(diff.stdout)
    lines = diff.stdout.splitlines()
    assert any(x.startswith("+ api-example-com: host api.example.com tcp/443") for x in lines)
    assert any(x.startswith("+ ip-2001-db8--5: cidr 2001:db8::5/128 tcp/443") for x in lines)
    assert any(x.startswith(f"- neo4j ({policy}:5): host neo4j tcp/7474,7687") for x in lines)
    assert any(x.startswith(f"= postgres ({policy}:4): in use") for x in lines)
    assert lines[-1] == "2 to add, 1 unused, 1 in use"


def test_suggest_from_an_evidence_bundle(audited, tmp_path):
    topo, _policy, _state = audited
    bundle = tmp_path / "bundle"
    topo.sentinel("report", "--last", "1h", "--bundle", str(bundle))  # exit 1: audited calls
    out = topo.sentinel("policy", "suggest", "--from-bundle", str(bundle))
    assert out.returncode == 0, out.stderr
    hosts = {(a.host, str(a.cidr)) for a in parse_policy(out.stdout).allow}
    assert ("api.example.com", "None") in hosts and (None, "2001:db8::5/128") in hosts
    assert f"# source: bundle {bundle}" in out.stdout
    (bundle / "flows.jsonl").write_text("")  # a tampered bundle is refused
    bad = topo.sentinel("policy", "suggest", "--from-bundle", str(bundle))
    assert bad.returncode == 2 and "does not verify, changed: flows.jsonl" in bad.stderr


def test_explain_names_the_layer_the_entry_and_the_rule(audited):
    topo, policy, _state = audited
    pg = topo.sentinel("explain", "postgres:5432", "--format", "json")
    assert pg.returncode == 0, pg.stderr
    got = json.loads(pg.stdout)
    assert (got["verdict"], got["decided_by"]) == ("allow", "netfilter")
    assert got["entries"][0]["where"] == f"{policy}:4"
    dns = next(x for x in got["layers"] if x["layer"] == "dns")
    assert sorted(dns["pinned"]) == ["198.18.0.2", "2001:db8::2"]
    assert dns["pin"]["ttl_s"] == 60  # the upstream's TTL, within min/max, from the store
    net = next(x for x in got["layers"] if x["layer"] == "netfilter")
    assert {c["set_entry"] for c in net["checked"]} == {
        "198.18.0.2,tcp:5432",
        "2001:db8::2,tcp:5432",
    }

    api = topo.sentinel("explain", "api.example.com:443", "--format", "json")
    assert api.returncode == 1
    got = json.loads(api.stdout)
    assert (got["verdict"], got["decided_by"]) == ("audit", "dns")  # not allowlisted
    dns = next(x for x in got["layers"] if x["layer"] == "dns")
    assert dns["relayed_answer"] == ["198.18.5.5"]  # what the upstream said, from the store
    net = next(x for x in got["layers"] if x["layer"] == "netfilter")
    assert net["checked"][0]["rule"] == "-A SENTINEL-DENY -j ACCEPT"  # logged, let through

    udp = topo.sentinel("explain", "198.18.5.5:443/udp")
    assert udp.returncode == 1
    assert udp.stdout.startswith("198.18.5.5:443/udp: AUDIT (decided by netfilter; mode audit)")
    assert "none of the policy's allow entries covers this destination" in udp.stdout

    wrong_port = topo.sentinel("explain", "postgres:80", "--format", "json")
    got = json.loads(wrong_port.stdout)
    assert wrong_port.returncode == 1 and got["decided_by"] == "netfilter"
    assert got["entries"][0]["name"] == "postgres"  # the entry that names it, other ports

    bad = topo.sentinel("explain", "postgres")
    assert bad.returncode == 2 and "is not HOST:PORT" in bad.stderr


ENFORCE = POLICY.replace("mode: audit", "mode: enforce").replace(
    "canary: {target: 198.18.0.99, port: 443, interval: 1s}\n", ""
)

GUARDED = (
    TCP
    + """
print(json.dumps({"api": tcp("api.example.com", 443), "ip": tcp("198.18.5.5", 8443),
                  "pg": tcp("postgres", 5432)}))
"""
)


def test_suggest_from_blocked_attempts_with_the_guard_in_enforce_mode(topo, tmp_path):
    """Enforce mode: names are refused before any connection, so the ports come from the
    guard (getaddrinfo(name, port)) and IP connects from the guard and the kernel."""
    from sentinel.guard import guard_path

    topo.start_dns_server(RECORDS, tmp_path, ttl=60)
    policy = tmp_path / "policy.yaml"
    policy.write_text(ENFORCE)
    sentinel = RunningSentinel(topo, policy)
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    env = {
        "SENTINEL_POLICY": str(policy),
        "SENTINEL_STATE_DIR": str(state),
        "SENTINEL_GUARD": "enforce",
        "PYTHONPATH": str(guard_path()),
    }
    out = json.loads(topo.run("app", PYTHON, "-c", GUARDED, env=env, timeout=60).stdout)
    assert out == {"api": "SecurityError", "ip": "SecurityError", "pg": "ok"}, out
    db = state / "events.db"
    assert wait_for(
        lambda: (
            len(_stored(db, "SELECT 1 FROM events WHERE layer = 'guard' AND verdict = 'blocked'"))
            >= 2
        ),
        timeout=20,
    ), sentinel.log()
    assert sentinel.stop() == 0
    result = topo.sentinel("policy", "suggest", "--last", "1h")
    assert result.returncode == 0, result.stderr
    suggested = parse_policy(result.stdout)
    got = {(a.host, str(a.cidr), a.ports, a.protocol) for a in suggested.allow}
    assert ("api.example.com", "None", (443,), "tcp") in got
    assert (None, "198.18.5.5/32", (8443,), "tcp") in got
    assert "ports seen only at name resolution (guard); protocol tcp assumed" in result.stdout
    assert "guard=" in result.stdout
    path = tmp_path / "suggested.yaml"
    path.write_text(result.stdout)
    check = topo.sentinel("check", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
