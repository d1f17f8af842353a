"""Issue 13 (items 5-10, 13): a hostile app must not blind or flood detection. Each test runs a
real `sentinel run` in the app namespace (real netfilter, real NFLOG, the real guard receiver
and store) and attacks it the way the red team did: hostile datagrams on guard.sock, a killed
daemon thread, forged heartbeats and identities, a flood of forged reports, guard drops,
control characters, and two processes attempting the same destination. See docs/hardening.md.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON, Topology
from tests.conftest import (
    RECORDS,
    RunningSentinel,
    policy_text,
    report,
    spawn_alert_receiver,
    wait_for,
)

pytestmark = pytest.mark.netns
OUTSIDE = "198.18.5.5"
HOOK_PORT = 18113
ALERTING = policy_text() + "alerts:\n  webhook: {url_env: HOSTILE_WEBHOOK_URL}\n"

# a guarded app: N refused connects to the outside host (SecurityError before any packet)
GUARDED = r"""
import json, socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
refused = 0
for i in range(n):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("198.18.5.5", port))
    except PermissionError:
        refused += 1
    except OSError:
        pass
    finally:
        s.close()
print(json.dumps({"refused": refused}))
"""

# kills one named thread of `sentinel run` on SIGUSR1, the way an uncaught error would
HARNESS = r"""
import ctypes, signal, sys, threading
from sentinel.cli import main

class Killed(BaseException):
    pass

TARGET = sys.argv[1]

def kill(*_):
    name = open(TARGET).read().strip()
    for t in threading.enumerate():
        if t.name == name:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(Killed))

signal.signal(signal.SIGUSR1, kill)
sys.argv = ["sentinel", "run", "--policy", sys.argv[2]]
main()
"""


class Harnessed(RunningSentinel):
    """`sentinel run` (the real CLI entry) whose threads the test can kill by name."""

    def __init__(
        self, topo: Topology, policy: Path, target: Path, prefix: tuple[str, ...] = ()
    ) -> None:
        self.target = target
        self.proc = topo.spawn(
            "app",
            *prefix,
            PYTHON,
            "-c",
            HARNESS,
            str(target),
            str(policy),
            env=_env(),
        )
        self.lines, self.raw = [], []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        running = wait_for(lambda: self.find("running") or self.proc.poll() is not None, 30)
        assert running and self.proc.poll() is None, "sentinel run did not start:\n" + self.log()

    def kill_thread(self, name: str) -> None:
        self.target.write_text(name)
        os.kill(self.proc.pid, 10)  # SIGUSR1


class Receiver:
    """The local alert receiver (sentinel.lab.alertreceiver) on the app namespace's loopback."""

    def __init__(self, topo: Topology, port: int = HOOK_PORT) -> None:
        self.proc = spawn_alert_receiver(topo, "app", "127.0.0.1", port, seconds=180)
        self.items: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.items.append(json.loads(line))
            except ValueError:
                pass

    def bodies(self) -> list[dict]:
        out = []
        for item in list(self.items):
            try:
                out.append(json.loads(item.get("body") or "{}"))
            except ValueError:
                pass
        return out


def _env(**extra: str) -> dict[str, str]:
    return {"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"], **extra}


def _state() -> Path:
    return Path(os.environ["SENTINEL_STATE_DIR"])


def start(topo: Topology, tmp_path: Path, text: str | None = None) -> RunningSentinel:
    path = tmp_path / "policy.yaml"
    path.write_text(text or policy_text())
    return RunningSentinel(topo, path)


def guarded(topo: Topology, n: int, port: int = 443, **env: str) -> dict:
    guard = topo.sentinel("guard", "path", check=True).stdout.strip()
    out = topo.run(
        "app", PYTHON, "-c", GUARDED, str(n), str(port), timeout=60,
        env=_env(PYTHONPATH=guard, SENTINEL_POLICY=str(_policy_path()), **env),
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


_POLICY: list[Path] = []


def _policy_path() -> Path:
    return _POLICY[-1]


def status(topo: Topology):  # noqa: ANN201
    return topo.sentinel("status", "--format", "json", env=_env())


def send(datagram: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tx:
        tx.sendto(datagram, str(_state() / "guard.sock"))


def udp_attempts(topo: Topology, ports: range) -> None:
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for p in range(int(sys.argv[1]), int(sys.argv[2])):\n"
        "    try:\n        s.sendto(b'x', ('198.18.5.5', p))\n    except OSError:\n        pass\n"
    )
    # -I: no guard, no site: a plain unguarded process (netfilter sees it, the guard cannot)
    topo.run("app", PYTHON, "-I", "-c", script, str(ports.start), str(ports.stop))


@pytest.fixture
def running(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    s = start(topo, tmp_path)
    _POLICY.append(tmp_path / "policy.yaml")
    yield topo, s
    s.stop()


# --- item 5: hostile datagrams ----------------------------------------------------------
def test_hostile_datagrams_are_counted_and_kill_no_thread(running):
    topo, s = running
    since = time.time()
    hostile = [
        b"[" * 5000,  # RecursionError in json before the fix: killed the receiver thread
        b'{"v": 1, "type": "egress_attempt", "pid": 1, "ip": "198.18.5.5", '
        b'"port": 100000000000000000000000, "protocol": "tcp"}',  # OverflowError in SQLite
        b'{"v": 1, "type": "egress_attempt", "pid": 1, "ip": "198.18.5.5", "port": 9, '
        b'"ts": NaN}',  # NaN failed a whole batch
        b'{"v": 1, "type": "heartbeat", "pid": 1, "interval": Infinity}',
        b'{"v": 1, "type": "egress_attempt", "pid": 1, "port": "443"}',
        b"{" + b" " * 70000 + b"}",  # past the datagram limit
    ]
    for datagram in hostile:
        send(datagram)
    assert guarded(topo, 5)["refused"] == 5  # after the attack: still recorded
    udp_attempts(topo, range(2001, 2016))  # 15 kernel-layer attempts: the store still writes
    wait_for(lambda: len(s.events("egress_attempt", layer="netfilter")) >= 15, 15)
    procs = wait_for(lambda: _malformed() >= len(hostile), 10)
    assert procs, json.loads((_state() / "guard_processes.json").read_text())
    assert s.proc.poll() is None and not s.events("monitor_lost"), s.log()
    rep = report(topo, since)
    assert rep["attempts_by_layer"].get("guard") == 5, rep["attempts_by_layer"]
    assert rep["attempts_by_layer"].get("netfilter") == 15, rep["attempts_by_layer"]
    assert rep["shed_events"] == 0 and rep["monitor_lost"]["losses"] == 0
    assert status(topo).returncode == 0
    assert topo.outside_packets() == 0


def _stored_detail(kind: str, pid: int) -> dict:
    import sqlite3

    conn = sqlite3.connect(f"file:{_state() / 'events.db'}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT detail FROM events WHERE kind = ? AND pid = ? ORDER BY ts DESC", (kind, pid)
        ).fetchone()
    finally:
        conn.close()
    return json.loads(row[0]) if row else {}


def _processes() -> dict:
    try:
        return json.loads((_state() / "guard_processes.json").read_text())["processes"]
    except (OSError, ValueError, KeyError):
        return {}


def _beats(pid: int) -> int:
    counters = _processes().get(str(pid), {}).get("counters", {})
    return 1 if counters else 0


def _malformed() -> int:
    try:
        return json.loads((_state() / "guard_processes.json").read_text())["garbage"]
    except (OSError, ValueError, KeyError):
        return 0


# --- item 5: supervision ----------------------------------------------------------------
@pytest.mark.parametrize("thread", ["guard-receiver", "event-store", "nflog-monitor"])
def test_dead_thread_is_a_p1_monitor_lost_partial_coverage_and_failing_status(
    topo, tmp_path, thread
):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    receiver = Receiver(topo)
    path = tmp_path / "policy.yaml"
    path.write_text(ALERTING)
    _POLICY.append(path)
    os.environ["HOSTILE_WEBHOOK_URL"] = f"http://127.0.0.1:{HOOK_PORT}/webhook"
    try:
        s = Harnessed(topo, path, tmp_path / "kill-target")
    finally:
        os.environ.pop("HOSTILE_WEBHOOK_URL")
    try:
        since = time.time()
        assert wait_for(lambda: status(topo).returncode == 0, 10), status(topo).stdout
        s.kill_thread(thread)
        lost = s.wait_event("monitor_lost", timeout=10)
        assert lost["detail"]["component"] == thread and lost["detail"]["state"] == "lost"
        # `sentinel status` fails while the part is lost, naming it
        failing = wait_for(lambda: (st := status(topo)).returncode != 0 and st, 10)
        assert failing and thread in failing.stderr + failing.stdout, failing
        # the P1 reaches the receiver
        assert wait_for(
            lambda: [b for b in receiver.bodies() if b.get("kind") == "monitor_lost"], 15
        ), receiver.items
        # restarted after the back-off, resolved, status passes again
        resolved = wait_for(
            lambda: [e for e in s.events("monitor_lost") if e["detail"].get("resolved")], 20
        )
        assert resolved and resolved[0]["detail"]["component"] == thread, s.log()
        assert wait_for(lambda: status(topo).returncode == 0, 10), status(topo).stderr
        # the part works again: a new attempt is recorded by that layer
        if thread == "guard-receiver":
            assert guarded(topo, 1)["refused"] == 1
            assert wait_for(lambda: s.events("egress_attempt", layer="guard"), 10), s.log()
        else:
            udp_attempts(topo, range(3001, 3002))
            assert wait_for(lambda: s.events("egress_attempt", dst_port=3001), 10), s.log()
        rep = report(topo, since)
        assert rep["coverage"] == "partial", rep["coverage_detail"]
        assert any("monitor loss" in p for p in rep["coverage_detail"]["problems"])
        assert thread in rep["monitor_lost"]["components"]
    finally:
        s.stop()
    assert topo.outside_packets() == 0


# --- item 6: guard-side drops -------------------------------------------------------------
def test_guard_drops_are_reported_and_make_coverage_partial(running):
    topo, s = running
    since = time.time()
    assert guarded(topo, 3000)["refused"] == 3000  # faster than the reporter drains (256 queue)
    time.sleep(0.5)
    rep = wait_for(lambda: (r := report(topo, since)) and r["guard_dropped"] and r, 15)
    assert rep, json.dumps(report(topo, since)["guard"])[:3000]
    recorded = rep["attempts_by_layer"].get("guard", 0)
    assert rep["guard_dropped"] > 0 and recorded + rep["guard_dropped"] == 3000, (
        recorded,
        rep["guard_dropped"],
    )
    assert rep["coverage"] == "partial"
    assert any("dropped inside the app" in p for p in rep["coverage_detail"]["problems"])
    assert topo.outside_packets() == 0


# --- item 7: forged heartbeats --------------------------------------------------------------
LONG_GUARDED = r"""
import os, sys, time
print(os.getpid(), flush=True)
time.sleep(60)
"""


def test_forged_heartbeat_cannot_hide_a_killed_processs_gap(running):
    topo, s = running
    since = time.time()
    guard = topo.sentinel("guard", "path", check=True).stdout.strip()
    env = _env(
        PYTHONPATH=guard, SENTINEL_POLICY=str(_policy_path()), SENTINEL_GUARD_HEARTBEAT="0.5"
    )
    app = topo.spawn("app", PYTHON, "-c", LONG_GUARDED, env=env)
    try:
        victim = int(app.stdout.readline())
        assert wait_for(lambda: _beats(victim), 10), s.log()
        time.sleep(1.5)  # a few heartbeats at 0.5 s
        app.kill()  # SIGKILL: no exit heartbeat
        app.wait(5)
    finally:
        if app.poll() is None:
            app.kill()
    time.sleep(3)  # > 2.5 intervals without a heartbeat
    forged = {"v": 1, "type": "heartbeat", "pid": victim, "exe": "/forged", "state": "running",
              "interval": 1e9, "ts": time.time()}  # fmt: skip
    send(json.dumps(forged).encode())  # from the test process: another kernel pid
    assert wait_for(lambda: str(os.getpid()) in _processes(), 10)
    forger = _processes()[str(os.getpid())]  # tracked as the kernel's pid: ours, not the victim's
    assert forger["verified"] and forger["exe"] != "/forged"
    rep = report(topo, since)
    mine = rep["guard"]["identities"][forger["identity"]]
    assert mine["pid"] == os.getpid() and mine["heartbeats"] == 1
    stored = _stored_detail("guard_heartbeat", os.getpid())
    assert stored["sender"]["claimed_pid"] == victim and stored["claimed_interval"] == 1e9
    assert stored["interval"] == 60.0  # clamped
    victim_gaps = [g for g in rep["guard"]["gaps"] if g["identity"].startswith(f"pid:{victim}")]
    assert victim_gaps and victim_gaps[-1]["reason"] == "no heartbeat", rep["guard"]
    assert rep["coverage"] == "partial"


# --- item 8: across PID namespaces ----------------------------------------------------------
def test_sender_outside_the_sentinels_pid_namespace_is_claimed_only(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text())
    _POLICY.append(path)
    unshare = ("unshare", "--pid", "--fork", "--kill-child=SIGTERM", "--mount-proc")
    s = Harnessed(topo, path, tmp_path / "unused", prefix=unshare)
    try:
        claimed = {"v": 1, "type": "egress_attempt", "pid": 4242, "exe": "/claimed/exe",
                   "ip": "198.18.5.5", "port": 443, "protocol": "tcp", "verdict": "blocked"}  # fmt: skip
        send(json.dumps(claimed).encode())  # our pid is invisible in the sentinel's namespace
        event = s.wait_event("egress_attempt", layer="guard")
        sender = event["detail"]["sender"]
        assert event["pid"] is None and sender["kernel_pid"] == 0 and not sender["verified"]
        assert sender["claimed_pid"] == 4242 and sender["claimed_exe"] == "/claimed/exe"
        assert sender["uid"] == 0  # the kernel still says who (uid)
    finally:
        _stop_under_unshare(s)


def _stop_under_unshare(s: RunningSentinel) -> None:
    """unshare --fork waits for its child and does not pass SIGTERM on: signal the child."""
    pid = s.proc.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        os.kill(int(child), 15)
    s.proc.wait(timeout=20)


# --- item 9: forged reports flood the pager ---------------------------------------------
FORGER = r"""
import json, os, socket, sys, time
path, n, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def burst(tag, count):
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for i in range(count):
        msg = {"v": 1, "type": "egress_attempt", "pid": 1000 + i, "exe": f"/forged/{tag}/{i}",
               "ip": "198.18.5.5", "port": 1 + i, "protocol": "tcp", "verdict": "blocked",
               "frame": f"/made/up.py:{i} in steal"}
        tx.sendto(json.dumps(msg).encode(), path)
for p in range(procs):
    pid = os.fork()
    if pid == 0:
        burst(p, n)
        os._exit(0)
    os.waitpid(pid, 0)
print("done")
"""


def test_forged_reports_page_a_bounded_number_of_times(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    receiver = Receiver(topo)
    os.environ["HOSTILE_WEBHOOK_URL"] = f"http://127.0.0.1:{HOOK_PORT}/webhook"
    try:
        s = start(topo, tmp_path, ALERTING)
    finally:
        os.environ.pop("HOSTILE_WEBHOOK_URL")
    try:
        sock = str(_state() / "guard.sock")
        # 300 datagrams with 300 different exe values from one process, then 30 processes x 10
        topo.run("app", PYTHON, "-I", "-c", FORGER, sock, "300", "1", timeout=60)
        topo.run("app", PYTHON, "-I", "-c", FORGER, sock, "10", "30", timeout=60)
        assert wait_for(lambda: len(s.events("egress_attempt", layer="guard")) >= 600, 20)

        def paged() -> list[dict]:
            return [b for b in receiver.bodies() if b.get("layer") == "guard"]

        assert wait_for(paged, 30), "no guard page arrived"  # the first is on its way at once
        time.sleep(5)  # the budget's upper bound: what would have been sent is sent by now
        pages = paged()
        firsts = [b for b in pages if not b.get("rollup")]
        assert 1 <= len(pages) <= 20, len(pages)  # the budget: 20 P1 alerts a minute
        for body in firsts:
            assert "/forged/" not in body["process"], body  # named by the kernel, not the claim
            assert body["details"]["corroborated"] is False
            assert "not seen by the kernel" in body["title"]
    finally:
        s.stop()


# --- item 10: joins across processes ------------------------------------------------------
def test_kernel_and_guard_blocks_from_two_processes_are_two_attempts(running):
    topo, s = running
    since = time.time()
    probe = "import socket\ns = socket.socket(); s.settimeout(2)\ntry:\n s.connect(('198.18.5.5', 443))\nexcept OSError:\n pass\n"  # noqa: E501
    topo.run("app", PYTHON, "-I", "-c", probe)  # unguarded: the kernel blocks it
    time.sleep(1)
    assert guarded(topo, 1)["refused"] == 1  # guarded, another process: no packet at all
    s.wait_event("egress_attempt", layer="guard", dst_port=443)
    s.wait_event("egress_attempt", layer="netfilter", dst_port=443)
    rep = report(topo, since)
    to443 = [a for a in rep["attempts"] if a["dst_port"] == 443]
    assert sorted(tuple(a["layers"]) for a in to443) == [("guard",), ("netfilter",)], to443
    kernel = next(a for a in to443 if a["layers"] == ["netfilter"])
    guard = next(a for a in to443 if a["layers"] == ["guard"])
    assert kernel["pid"] is None and guard["pid"] and kernel["packets"] >= 1
    assert topo.outside_packets() == 0


# --- item 13: control characters ---------------------------------------------------------
def test_control_characters_never_reach_table_logs_or_events(running):
    topo, s = running
    since = time.time()
    evil = "evil\x1b[2J\x1b[31mhost\nforged line\x07.example"
    msg = {"v": 1, "type": "egress_attempt", "pid": 1, "exe": "/x\x1b[31m", "host": evil,
           "port": 443, "protocol": "dns", "verdict": "blocked",
           "frame": "app.py:1 in \x1b]0;pwned\x07f", "stack": ["a\nb"]}  # fmt: skip
    send(json.dumps(msg).encode())
    event = s.wait_event("egress_attempt", layer="guard")
    assert event["dst_name"] == "evil\\x1b[2J\\x1b[31mhost\\x0aforged line\\x07.example"
    assert "\x1b" not in json.dumps(event, ensure_ascii=False)
    table = report(topo, since, fmt="table")
    assert "\x1b[2J" not in table and "\x1b[31m" not in table and "\\x1b[2J" in table
    assert not any("\x1b" in line or "\\u001b" in line for line in s.raw), s.log()
