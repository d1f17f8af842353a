"""Issue 13 (items 5-10, 13, 14, 16) without root: the guard wire format's limits, the store
writer under values SQLite cannot hold, the alert budget and identity-keyed caps, guard
coverage per identity, joins, escaping, the watchdog's status file, and unsafe policy values.
The same attacks against a running `sentinel run` are in tests/test_hostile.py."""

from __future__ import annotations

import ipaddress
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentinel.alerts.router import Router
from sentinel.escape import escape_controls
from sentinel.evidence import guardcov
from sentinel.evidence import report as rep
from sentinel.guard import wire
from sentinel.guard.identity import Sender
from sentinel.guard.receiver import GuardReceiver
from sentinel.policy import safety
from sentinel.policy.load import PolicyError, parse_policy
from sentinel.store.events import Event, EventStore, connect, query

NOW = 1_800_000_000.0


# --- item 5: the wire format ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"[" * 5000, "nested deeper"),
        (b'{"v": 1, "type": "heartbeat", "pid": 1, "x": [[[[[1]]]]]}', "nested deeper"),
        (b'{"v": 1, "type": "egress_attempt", "pid": 1, "port": 100000000000000000000000}',
         "integer out of range"),
        (b'{"v": 1, "type": "egress_attempt", "pid": 1, "ts": NaN}', "NaN"),
        (b'{"v": 1, "type": "heartbeat", "pid": 1, "interval": Infinity}', "NaN"),
        (b'{"v": 1, "type": "heartbeat", "pid": 1, "interval": 1e999}', "out of range"),
        (b'{"v": 1, "type": "egress_attempt", "pid": 1, "port": 70000}', "port"),
        (b'{"v": 1, "type": "egress_attempt", "pid": 1, "port": "443"}', "port"),
        (b'{"v": 1, "type": "egress_attempt", "pid": -1}', "pid"),
        (b'{"v": 1, "type": "egress_attempt", "pid": 1, "stack": [1, 2]}', "stack"),
        (b'{"v": 1, "type": "egress_attempt", "pid": 1, "ip": "not-an-ip"}', "ip"),
        (b'{"v": 1, "type": "heartbeat", "pid": 1, "counters": {"a": -1}}', "counters"),
        (b'{"v": true, "type": "heartbeat", "pid": 1}', "v != 1"),
        (b"{" + b" " * 70000 + b"}", "too large"),
        (b"\xff\xfe", "UTF-8"),
    ],
)  # fmt: skip
def test_bad_datagrams_are_malformed_with_a_reason(datagram, reason):
    with pytest.raises(wire.Malformed) as info:
        wire.decode(datagram)
    assert reason in info.value.reason


def test_receiver_counts_every_bad_datagram_and_never_raises(tmp_path):
    got: list[Event] = []
    receiver = GuardReceiver(tmp_path, got.append, status_every=0)
    bad = [b"[" * 100_000, b'{"v":1,"type":"egress_attempt","pid":1,"port":1e400}', b"{}" * 9]
    for datagram in bad:
        assert receiver.handle(datagram, Sender(1234, 0, 0)) is None
    good = {"v": 1, "type": "egress_attempt", "pid": 99, "exe": "/claimed", "ip": "198.18.5.5",
            "port": 443, "protocol": "tcp", "ts": NOW}  # fmt: skip
    event = receiver.handle(json.dumps(good).encode(), Sender(1234, 0, 0, 5, "/real/python"))
    assert receiver.garbage == len(bad) and sum(receiver.malformed.values()) == len(bad)
    assert event is not None and got == [event]
    assert event.pid == 1234 and event.exe == "/real/python"  # the kernel's, not the claims
    assert event.detail["sender"]["claimed_pid"] == 99
    assert event.detail["sender"]["claimed_exe"] == "/claimed"
    assert event.ts != NOW and "claimed_ts" in event.detail  # far from our clock: ours wins


def test_a_sender_in_another_pid_namespace_is_claimed_only(tmp_path):
    receiver = GuardReceiver(tmp_path, lambda e: None, status_every=0)
    msg = {"v": 1, "type": "heartbeat", "pid": 7, "exe": "/x", "interval": 1e9}
    event = receiver.handle(json.dumps(msg).encode(), Sender(None, 1000, 1000))
    sender = event.detail["sender"]
    assert event.pid is None and not sender["verified"] and sender["kernel_pid"] == 0
    assert sender["claimed_pid"] == 7 and sender["uid"] == 1000
    assert sender["identity"] == "unverified:uid:1000:claimed-pid:7"
    assert event.detail["interval"] == wire.MAX_INTERVAL and event.detail["claimed_interval"] == 1e9


# --- item 13: control characters ----------------------------------------------------------
def test_control_characters_are_escaped_visibly():
    assert escape_controls("plain naïve text") == "plain naïve text"
    assert escape_controls("a\x1b[2Jb\nc\x00\u202e\\") == "a\\x1b[2Jb\\x0ac\\x00\\u202e\\\\"
    receiver = GuardReceiver(Path("/nonexistent"), lambda e: None, status_every=0)
    msg = {"v": 1, "type": "egress_attempt", "pid": 1, "host": "evil\x1b[31m\n.example",
           "frame": "x.py:1 in \x07f", "stack": ["a\rb"], "protocol": "dns"}  # fmt: skip
    event = receiver.handle(json.dumps(msg).encode(), Sender(5, 0, 0))
    assert event.dst_name == "evil\\x1b[31m\\x0a.example"
    assert event.stack == "x.py:1 in \\x07f" and event.detail["traceback"] == ["a\\x0db"]


# --- item 5: the store writer -----------------------------------------------------------------
def test_store_writer_survives_values_sqlite_cannot_hold(tmp_path):
    store = EventStore(tmp_path / "events.db").start()
    try:
        store.put(Event(layer="guard", kind="egress_attempt", dst_port=10**23))
        store.put(Event(layer="guard", kind="egress_attempt", ts=math.nan))
        store.put(Event(layer="guard", kind="egress_attempt", pid=2**70, ts=math.inf))
        for i in range(15):
            store.put(Event(layer="netfilter", kind="egress_attempt", dst_port=i))
        assert store.flush(10)
        assert store._thread.is_alive()
        stats = store.stats()
        assert stats["written"] == 18 and stats["shed"] == 0, stats
    finally:
        store.stop()
    conn = connect(tmp_path / "events.db", readonly=True)
    rows = query(conn, 0, time.time() + 10)
    conn.close()
    assert len(rows) == 18 and all(math.isfinite(r.ts) for r in rows)
    assert sum(r.dst_port is None for r in rows) == 3  # the unstorable values became NULL


# --- item 9: alerts ---------------------------------------------------------------------------
def guard_attempt(i: int, pid: int = 4321, verified: bool = True, port: int | None = None):
    sender = {"verified": verified, "identity": f"pid:{pid}:1", "uid": 0, "kernel_pid": pid,
              "kernel_exe": "/usr/bin/python3.11", "claimed_exe": f"/forged/{i}"}  # fmt: skip
    return Event(layer="guard", kind="egress_attempt", dst_ip="198.18.5.5",
                 dst_port=port or 1 + i, exe=f"/forged/{i}", pid=pid,
                 detail={"sender": sender})  # fmt: skip


def test_forged_exes_from_one_process_share_one_cap():
    r = Router(dedup_window=60, per_process_cap=10)
    alerts = []
    for i in range(300):
        alerts += r.route(guard_attempt(i), 1.0)
    assert len(alerts) == 11 and alerts[-1].destination == "other destinations"
    assert all("/forged/" not in a.process for a in alerts)
    assert alerts[0].process == "/usr/bin/python3.11 (pid 4321)"
    assert alerts[0].details["corroborated"] is False
    assert "not seen by the kernel" in alerts[0].title


def test_unverified_senders_share_one_bucket_and_say_so():
    r = Router(dedup_window=60, per_process_cap=10)
    alerts = []
    for i in range(50):
        alerts += r.route(guard_attempt(i, pid=1000 + i, verified=False), 1.0)
    assert len(alerts) == 11  # 50 claimed pids, one bucket: never paged on claims alone
    assert "NOT verified" in alerts[0].title and alerts[0].process.startswith("unverified")


def test_global_budget_holds_the_rest_and_rolls_them_up():
    r = Router(dedup_window=60, per_process_cap=10, budget=20, budget_window=60)
    alerts = []
    for p in range(30):  # 30 distinct verified processes x 10 destinations
        for i in range(10):
            alerts += r.route(guard_attempt(i, pid=2000 + p), 1.0)
    assert len(alerts) == 20
    assert r.tick(30.0) == []
    later = r.tick(61.5)
    held = [a for a in later if a.kind == "alert_budget"]
    assert len(held) == 1 and held[0].count == 300 - 20, held
    assert "held back by the alert budget" in held[0].title


def test_monitor_back_resolves_the_incident_of_the_loss():
    r = Router(dedup_window=60)
    lost = Event(layer="sentinel", kind="monitor_lost", verdict="info",
                 detail={"component": "event-store", "reason": "thread died"})  # fmt: skip
    other = Event(layer="sentinel", kind="monitor_lost", verdict="info",
                  detail={"component": "guard-receiver", "reason": "thread died"})  # fmt: skip
    first = r.route(lost, 1.0)
    second = r.route(other, 1.5)
    assert len(first) == 1 and len(second) == 1  # one incident per component
    assert first[0].dedup_key != second[0].dedup_key
    back = Event(layer="sentinel", kind="monitor_lost", verdict="info",
                 detail={"component": "event-store", "resolved": True})  # fmt: skip
    out = r.route(back, 5.0)
    assert len(out) == 1 and out[0].action == "resolve"
    assert out[0].dedup_key == first[0].dedup_key


# --- items 6, 7: guard coverage per identity ----------------------------------------------
def beat(ts: float, identity: str, interval: float = 1.0, state: str = "running", dropped=0):
    pid = int(identity.split(":")[1]) if identity.startswith("pid:") else None
    return Event(layer="guard", kind="guard_heartbeat", verdict="info", pid=pid, ts=ts,
                 detail={"interval": interval, "state": state,
                         "counters": {"dropped_total": dropped},
                         "sender": {"identity": identity, "verified": pid is not None}})  # fmt: skip


def test_a_forged_heartbeat_never_fills_another_processs_gap():
    window = rep.Window(NOW - 60, NOW)
    victim = [beat(NOW - 60 + t, "pid:10:1") for t in range(0, 20)]  # then SIGKILLed
    forged = [beat(NOW - 5, "pid:66:1", interval=1e9)]
    status = guardcov.guard_status(victim + forged, window, rep.heartbeat_gaps)
    gaps = [g for g in status["gaps"] if g["identity"] == "pid:10:1"]
    assert gaps and gaps[-1]["seconds"] > 35 and status["status"] == "stale"
    report = _report(victim + forged, window)
    assert report["coverage"] == "partial"


def test_clean_exit_ends_a_process_without_a_gap_and_drops_count():
    window = rep.Window(NOW - 60, NOW)
    run = [beat(NOW - 30 + t, "pid:11:1", dropped=0) for t in range(5)]
    run.append(beat(NOW - 25, "pid:11:1", state="exit", dropped=744))
    status = guardcov.guard_status(run, window, rep.heartbeat_gaps)
    assert status["gaps"] == [] and status["dropped"] == 744
    problems = _report(run, window)["coverage_detail"]["problems"]
    assert any("744 guard report(s) dropped" in p for p in problems)


def _report(events, window):
    check = {"checked": True, "unaccounted_packets": 0}
    applied = {"ruleset_sha256": "x", "applied_at": NOW - 3600}
    beats = [
        Event(layer="sentinel", kind="monitor_heartbeat", verdict="info", ts=t,
              detail={"interval": 5.0, "state": "running", "pid": 1, "started_at": 0})
        for t in range(int(window.since) - 5, int(window.until) + 1, 5)
    ]  # fmt: skip
    return rep.assemble(window, beats + events, {}, check, {"sha256": "x"}, applied)


def test_monitor_lost_in_the_window_makes_coverage_partial():
    window = rep.Window(NOW - 60, NOW)
    lost = Event(layer="sentinel", kind="monitor_lost", verdict="info", ts=NOW - 30,
                 detail={"component": "event-store", "state": "lost"})  # fmt: skip
    report = _report([lost], window)
    assert report["coverage"] == "partial" and report["monitor_lost"]["losses"] == 1
    assert _report([], window)["coverage"] == "complete"


# --- item 10: joins -------------------------------------------------------------------------
def test_a_guard_blocked_call_never_joins_a_kernel_event():
    kernel = Event(layer="netfilter", kind="egress_attempt", dst_ip="198.18.5.5", dst_port=443,
                   protocol="tcp", ts=NOW)  # fmt: skip
    blocked = Event(layer="guard", kind="egress_attempt", dst_ip="198.18.5.5", dst_port=443,
                    protocol="tcp", ts=NOW + 1, pid=77)  # fmt: skip
    joined = rep.join_attempts([kernel, blocked])
    assert sorted(tuple(a["layers"]) for a in joined) == [("guard",), ("netfilter",)]
    assert next(a for a in joined if a["layers"] == ["netfilter"])["pid"] is None


# --- the watchdog's status file ---------------------------------------------------------
def test_status_fails_while_a_part_is_lost_or_the_watchdog_is_stale(state_dir):
    from sentinel.run.watchdog import read_status
    from sentinel.store.state import write_json

    assert read_status() is None  # no daemon ever ran here
    write_json("watchdog.json", {"checked_at": time.time(), "lost": {}, "stopped": False})
    assert read_status()["ok"]
    lost = {"event-store": {"since": time.time(), "reason": "thread event-store died"}}
    write_json("watchdog.json", {"checked_at": time.time(), "lost": lost, "stopped": False})
    assert "event-store" in read_status()["problem"] and not read_status()["ok"]
    write_json("watchdog.json", {"checked_at": time.time() - 60, "lost": {}, "stopped": False})
    assert "last checked" in read_status()["problem"]
    write_json("watchdog.json", {"checked_at": time.time() - 60, "lost": {}, "stopped": True})
    assert read_status() is None  # stopped cleanly


# --- item 16: unsafe policy values --------------------------------------------------------
ENTRY = "version: 1\nmode: {mode}\nallow:\n  - {{name: a, {field}: '{value}', ports: [443]}}\n"


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("cidr", "0.0.0.0/0", "allows every destination"),
        ("cidr", "::/0", "allows every destination"),
        ("host", "169.254.169.254", "metadata"),
        ("host", "fe80::1%eth0", "scoped"),
        ("host", "::ffff:198.18.0.2", "write 198.18.0.2"),
        ("host", "1.2.3", "as 1.2.0.3"),
        ("host", "0x7f000001", "as 127.0.0.1"),
        ("host", "0.0.0.0", "unspecified"),
        ("host", "fe80::1", "link-local"),
    ],
)
def test_unsafe_hosts_and_networks_are_refused_naming_file_line_field(field, value, why):
    with pytest.raises(PolicyError) as info:
        parse_policy(ENTRY.format(mode="enforce", field=field, value=value), "p.yaml")
    assert f"p.yaml:4: allow[0].{field}: " in str(info.value) and why in str(info.value)


def test_everything_in_audit_mode_and_wide_networks_are_warned():
    policy = parse_policy(ENTRY.format(mode="audit", field="cidr", value="0.0.0.0/0"), "p.yaml")
    assert policy.warnings and "p.yaml:4: allow[0].cidr:" in policy.warnings[0]
    wide = parse_policy(ENTRY.format(mode="enforce", field="cidr", value="10.0.0.0/7"), "p.yaml")
    assert "very wide" in wide.warnings[0]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("dns: {min_ttl: 0}", "dns.min_ttl"),
        ("dns: {max_ttl: 0}", "dns.max_ttl"),
        ("monitor: {tamper_interval: 0}", "monitor.tamper_interval"),
        ("monitor: {tamper_interval: 200ms}", "monitor.tamper_interval"),
        ("canary: {target: 198.18.5.5, interval: 0}", "canary.interval"),
    ],
)
def test_interval_floors(text, field):
    with pytest.raises(PolicyError) as info:
        parse_policy(f"version: 1\n{text}\n", "p.yaml")
    assert f"p.yaml:2: {field}: " in str(info.value) and "floor of 1s" in str(info.value)


def test_upstream_outside_the_namespaces_networks_is_warned():
    nets = [ipaddress.ip_network("198.18.0.0/24"), ipaddress.ip_network("127.0.0.0/8")]
    assert safety.upstream_warning("198.18.0.53", nets) is None
    note = safety.upstream_warning("203.0.113.53", nets)
    assert note and "none of this network namespace's networks" in note and "198.18.0.0/24" in note


# --- item 14: check with many hostnames ---------------------------------------------------
def test_check_with_300_hostnames_has_no_index_error(tmp_path):
    lines = ["version: 1", "allow:"]
    lines += [f"  - {{name: h{i}, host: h{i}.example, ports: [443]}}" for i in range(300)]
    lines += ["tests:", "  - {to: 'h299.example:443', expect: allow}"]
    path = tmp_path / "many.yaml"
    path.write_text("\n".join(lines) + "\n")
    exe = str(Path(sys.executable).with_name("sentinel"))
    out = subprocess.run([exe, "check", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "300 allow entries, 1 tests passed" in out.stdout and "Traceback" not in out.stderr


def test_check_refuses_an_enforce_policy_allowing_everything_with_exit_2(tmp_path):
    path = tmp_path / "any.yaml"
    path.write_text("version: 1\nallow:\n  - {name: a, cidr: 0.0.0.0/0, ports: [443]}\n")
    exe = str(Path(sys.executable).with_name("sentinel"))
    out = subprocess.run([exe, "check", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"{path}:3: allow[0].cidr: 0.0.0.0/0" in out.stderr


# --- the watchdog's judgement (its threads are real; the monitor's counters are driven) ------
class _Ctx:
    def __init__(self, services: dict) -> None:
        self.services, self.sinks, self.events = services, [], []

    def add_sink(self, sink) -> None:  # noqa: ANN001
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        self.events.append(event)
        for sink in self.sinks:
            sink(event)


class _Monitor:
    def __init__(self) -> None:
        import threading

        self.counts = {"errors": 0, "overruns": 0, "lost": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stop.wait, daemon=True)
        self._thread.start()
        self._snapper = None

    def _run(self) -> None:
        self._stop.wait()


def test_watchdog_overrun_and_silence_are_losses_then_resolved(state_dir):
    import threading

    from sentinel.run.watchdog import Watchdog, read_status

    monitor = _Monitor()
    daemon = type("D", (), {})()
    daemon.ctx, daemon.stopping = _Ctx({"monitor": monitor}), threading.Event()
    daemon.resolver, daemon.threads = None, []
    dog = Watchdog(daemon, interval=3600)  # checks driven by hand below
    dog.start()
    dog.interval = 1.0  # the thread already waits an hour: only these checks run
    try:
        now = time.time()
        dog.check(now)
        assert daemon.ctx.events == [] and read_status()["ok"]
        monitor.counts["overruns"] += 7  # ENOBUFS: the kernel dropped NFLOG messages
        dog.check(now + 1)
        lost = [e for e in daemon.ctx.events if e.kind == "monitor_lost"]
        assert len(lost) == 1 and "7 NFLOG message(s) lost" in lost[0].detail["reason"]
        assert lost[0].detail["component"] == "nflog-monitor" and not read_status()["ok"]
        dog.check(now + 2)
        dog.check(now + 3)
        back = [e for e in daemon.ctx.events if e.detail.get("resolved")]
        assert len(back) == 1 and read_status()["ok"]
        dog.last_monitor_beat = time.time() - 60  # no heartbeat for 12 intervals
        dog.check(now + 4)
        silent = [e for e in daemon.ctx.events if e.detail.get("state") == "lost"]
        assert len(silent) == 2 and "no NFLOG monitor heartbeat" in silent[-1].detail["reason"]
    finally:
        monitor._stop.set()
        dog.stop()
    assert read_status() is None  # a clean stop says so


def test_check_prints_warnings_on_stderr_and_passes(tmp_path):
    path = tmp_path / "audit.yaml"
    path.write_text("version: 1\nmode: audit\nallow:\n  - {name: a, cidr: 0.0.0.0/0, ports: [1]}\n")
    exe = str(Path(sys.executable).with_name("sentinel"))
    out = subprocess.run([exe, "check", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"warning: {path}:4: allow[0].cidr: 0.0.0.0/0 allows every destination" in out.stderr
