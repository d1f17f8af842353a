"""Issue 9 hardening against a real `sentinel run` in the app namespace: malformed and hostile
DNS, rebinding, SIGKILL under a flood and during a reload, a policy file deleted / replaced by
garbage, an asyncio app under uvloop, and a full / read-only state directory; plus pure tests
of the resolver's parser on oversized and hostile names. See docs/hardening.md."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON, Topology
from tests.conftest import (
    ONLY_OLLAMA,
    RECORDS,
    RunningSentinel,
    editor_save,
    policy_text,
    query,
    report,
    spawn_alert_receiver,
    status_json,
    wait_for,
)

pytestmark = pytest.mark.netns
OUTSIDE = "198.18.5.5"


def start(topo: Topology, tmp_path: Path, text: str | None = None) -> RunningSentinel:
    path = tmp_path / "policy.yaml"
    path.write_text(text if text is not None else policy_text())
    return RunningSentinel(topo, path)


def app(topo: Topology, script: str, *args: str, timeout: float = 30, **env: str) -> dict:
    out = topo.run("app", PYTHON, "-c", script, *args, timeout=timeout, env=env or None)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- 1. malformed and hostile DNS ------------------------------------------------------------
MALFORMED = r"""
import json, socket, struct, sys
HDR = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
TAIL = b"\x00\x01\x00\x01"
cases = {
    "truncated_header": b"\x12\x34\x01",
    "garbage": bytes((i * 37 + 11) % 256 for i in range(64)) ,
    "pointer_loop": HDR + b"\xc0\x0c" + TAIL,
    "255_labels": HDR + b"\x01a" * 255 + b"\x00" + TAIL,
    "oversized_name": HDR + (b"\x3f" + b"x" * 63) * 5 + b"\x00" + TAIL,
}
hostile = HDR + b"\x0dev\x1b[31mil\x00\n\xff\\" + b"\x07example\x03com\x00" + TAIL
out = {}
def udp(wire):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5)
    s.sendto(wire, ("198.18.0.53", 53))
    try:
        return s.recv(4096)
    except OSError:
        return None
def tcp(wire):
    s = socket.create_connection(("198.18.0.53", 53), timeout=3); s.settimeout(3)
    s.sendall(struct.pack("!H", len(wire)) + wire)
    try:
        head = s.recv(2)
        return s.recv(4096) if len(head) == 2 else None
    except OSError:
        return None
for name, wire in [*cases.items(), ("hostile", hostile)]:
    for transport, send in (("udp", udp), ("tcp", tcp)):
        reply = send(wire)
        out[f"{name}/{transport}"] = None if reply is None else reply[3] & 0x0F
print(json.dumps(out))
"""


def test_malformed_and_hostile_dns_is_answered_or_dropped_counted_and_survived(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    s = start(topo, tmp_path)
    got = app(topo, MALFORMED)
    formerr = 1
    for transport in ("udp", "tcp"):
        # no header to answer: dropped (UDP) or connection closed (TCP)
        assert got[f"truncated_header/{transport}"] is None, got
        for case in ("pointer_loop", "255_labels", "oversized_name"):
            assert got[f"{case}/{transport}"] == formerr, (case, transport, got)
        assert got[f"hostile/{transport}"] == 5, got  # parsed, an outside name: REFUSED
    assert s.proc.poll() is None, s.log()
    # the resolver still answers an allowlisted query, over both transports
    assert query(topo, "postgres")["addresses"] == ["198.18.0.2"]
    assert query(topo, "postgres", tcp=True)["addresses"] == ["198.18.0.2"]
    # every unparseable query is counted: 5 cases x 2 transports
    counted = wait_for(lambda: [x["malformed"] for x in s.find("dns_malformed")], 5)
    assert counted and max(counted) == 10, s.log()
    # the hostile name is recorded with its bytes escaped: no terminal escape, NUL or newline
    hostile = s.wait_event("egress_attempt", layer="dns")
    name = hostile["dst_name"]
    assert name == "ev\\027[31mil\\000\\010\\255\\092.example.com", name
    assert not any(ch in name for ch in "\x1b\x00\n")
    assert topo.outside_packets() == 0


# --- 2. DNS rebinding through the daemon ----------------------------------------------------
def test_rebinding_answers_are_never_pinned_and_outside_names_stay_refused(topo, tmp_path):
    records = {
        **RECORDS,
        "postgres": {"A": ["127.0.0.1", "198.18.0.2"], "AAAA": ["fe80::1"]},
        "neo4j": {"A": ["169.254.169.254"]},
        # an allowlisted name pointing at a public outside address: pinned on its ports only
        "ollama": {"A": [OUTSIDE]},
        # an outside name answering with an allowlisted upstream's address
        "api.openai.com": {"A": ["198.18.0.2"]},
    }
    topo.start_dns_server(records, tmp_path, ttl=1)
    s = start(topo, tmp_path, policy_text(min_ttl="30s"))
    assert query(topo, "postgres")["addresses"] == ["198.18.0.2"]
    assert query(topo, "postgres", "AAAA")["addresses"] == []
    assert query(topo, "neo4j")["addresses"] == []
    dropped = {a for e in s.events("dns_rebinding") for a in e["detail"]["dropped"]}
    assert {"127.0.0.1", "fe80::1", "169.254.169.254"} <= dropped, s.log()
    assert all(e["verdict"] == "blocked" for e in s.events("dns_rebinding"))
    sets = topo.run("app", "ipset", "list").stdout
    for address in ("127.0.0.1", "169.254.169.254", "fe80::1"):
        assert address not in sets, sets
    assert f"{OUTSIDE},tcp:11434" in sets and f"{OUTSIDE},tcp:443" not in sets
    # the outside name is refused by name, whatever address its upstream answer carries
    assert query(topo, "api.openai.com")["rcode"] == "REFUSED"
    s.wait_event("egress_attempt", dst_name="api.openai.com")
    assert not topo.probe("tcp", OUTSIDE, 443)["ok"]
    assert topo.outside_packets() == 0


# --- 3. SIGKILL during a reload and under a flood -------------------------------------------
FLOOD = r"""
import json, socket, sys, time
n, seconds = int(sys.argv[1]), float(sys.argv[2])
start, made, ports = time.monotonic(), 0, {}
for i in range(n):
    port = 20000 + i  # every attempt a distinct flow
    if i % 2:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.settimeout(0.5)
        try:
            s.connect(("198.18.5.5", port))
        except OSError:
            pass
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"x", ("198.18.5.5", port))
        except OSError:
            pass
    s.close(); made += 1
    if i == n // 3:
        print("third", flush=True)
    pause = start + seconds * (i + 1) / n - time.monotonic()
    if pause > 0:
        time.sleep(pause)
print(json.dumps({"made": made, "seconds": round(time.monotonic() - start, 2)}), flush=True)
"""


# a reload that takes a while to validate, render and commit: 4,000 extra allow entries
BIG_RELOAD = ONLY_OLLAMA.replace(
    "allow:\n",
    "allow:\n"
    + "".join(
        f"  - {{name: e{i}, host: 198.19.{i // 250}.{i % 250 + 1}, ports: [443]}}\n"
        for i in range(4000)
    ),
    1,
)


@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["before-the-reload-ran", "mid-reload"])
def test_sigkill_during_reload_under_flood_keeps_the_deny_and_restart_accounts(
    topo, tmp_path, delay
):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    s = start(topo, tmp_path, policy_text(tamper="1s"))
    since = time.time() - 1
    attempts = 300
    flood = topo.spawn("app", PYTHON, "-c", FLOOD, str(attempts), "4")
    assert flood.stdout.readline().strip() == "third"
    # a slow reload starts (the watcher debounces 100 ms, then ~0.5 s of work)...
    editor_save(tmp_path / "policy.yaml", BIG_RELOAD)
    time.sleep(delay)
    s.proc.send_signal(signal.SIGKILL)  # ...and the sentinel dies in it, under the flood
    s.proc.wait(timeout=10)
    done = json.loads(flood.stdout.readline())
    assert flood.wait(timeout=20) == 0 and done["made"] == attempts, done
    assert done["seconds"] < 6
    assert topo.outside_packets() == 0  # the deny held while nobody was watching
    restarted = RunningSentinel(topo, tmp_path / "policy.yaml")
    assert wait_for(lambda: status_json(topo)["in_sync"], 10)
    assert not topo.probe("tcp", OUTSIDE, 443)["ok"]
    attempts += 1
    restarted.wait_event("egress_attempt", dst_port=443, layer="netfilter")

    def accounted() -> tuple[int, dict]:
        r = report(topo, since)
        rows = [x for x in r["attempts_by_destination"] if OUTSIDE in x["destination"]]
        return sum(x["attempts"] for x in rows) + (r["unaccounted_packets"] or 0), r

    assert wait_for(lambda: accounted()[0] == attempts, 15, 1.0), accounted()
    assert topo.outside_packets() == 0


# --- 4. policy file deleted, then garbage --------------------------------------------------
def test_policy_deleted_then_garbage_keeps_rules_and_good_policy_is_picked_up(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    s = start(topo, tmp_path)
    policy = tmp_path / "policy.yaml"
    before = status_json(topo)["ruleset_sha256_kernel"]
    policy.unlink()
    # the watcher notices (and says so) at its next poll; nothing else may happen
    assert wait_for(lambda: s.find("policy_missing"), 10), s.log()
    assert s.proc.poll() is None, s.log()
    status = status_json(topo)
    assert status["in_sync"] and status["ruleset_sha256_kernel"] == before
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    assert not topo.probe("tcp", OUTSIDE, 443)["ok"]
    editor_save(policy, "\x00\xff{{ not: [yaml\n\t- garbage: }")
    rejected = s.wait_event("reload_rejected", timeout=10)
    assert rejected["detail"]["error"] and rejected["detail"]["kept"]
    status = status_json(topo)
    assert status["in_sync"] and status["ruleset_sha256_kernel"] == before
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    editor_save(policy, ONLY_OLLAMA)
    s.wait_event("policy_reloaded", timeout=10)
    assert wait_for(lambda: status_json(topo)["ruleset_sha256_kernel"] != before, 5)
    assert status_json(topo)["in_sync"]
    assert not topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    assert topo.probe("tcp", "198.18.0.4", 11434)["ok"]
    assert topo.outside_packets() == 0


# --- 5. asyncio under uvloop ----------------------------------------------------------------
UVLOOP_APP = r"""
import asyncio, json, socket
import uvloop
out = {}
async def main():
    try:
        await asyncio.wait_for(asyncio.open_connection("198.18.5.5", 443), 3)
        out["uvloop"] = "connected"
    except Exception as exc:
        out["uvloop"] = type(exc).__name__
uvloop.run(main())
s = socket.socket()  # the same process through CPython's socket module: the guard sees it
s.settimeout(3)
try:
    s.connect(("198.18.5.5", 8443))
    out["plain"] = "connected"
except Exception as exc:
    out["plain"] = type(exc).__name__
print(json.dumps(out))
"""


def test_uvloop_app_is_invisible_to_the_guard_but_blocked_and_recorded_by_netfilter(topo, tmp_path):
    import uvloop  # a test extra: its absence is a broken install, not a skip

    assert uvloop
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    s = start(topo, tmp_path)
    guard_path = topo.sentinel("guard", "path", check=True).stdout.strip()
    got = app(
        topo,
        UVLOOP_APP,
        PYTHONPATH=guard_path,
        SENTINEL_POLICY=str(tmp_path / "policy.yaml"),
        SENTINEL_STATE_DIR=os.environ["SENTINEL_STATE_DIR"],
        SENTINEL_GUARD="enforce",
    )
    assert got["uvloop"] in ("ConnectionRefusedError", "TimeoutError", "OSError"), got
    assert got["plain"] not in ("connected", "ConnectionRefusedError"), got  # refused in-process
    net = s.wait_event("egress_attempt", layer="netfilter", dst_port=443)
    assert net["verdict"] == "blocked" and net["dst_ip"] == OUTSIDE
    s.wait_event("egress_attempt", layer="guard", dst_port=8443)
    assert not s.events("egress_attempt", layer="guard", dst_port=443)  # libuv's own connect()
    assert not s.events("egress_attempt", layer="netfilter", dst_port=8443)  # never left Python
    assert topo.outside_packets() == 0


# --- 6. full / read-only state directory ---------------------------------------------------
ALERTING = policy_text() + "alerts:\n  webhook: {url_env: HARDENING_WEBHOOK_URL}\n"


class Receiver:
    """The alert receiver in the app namespace on loopback; request lines collected."""

    def __init__(self, topo: Topology, port: int) -> None:
        self.proc = spawn_alert_receiver(topo, "app", "127.0.0.1", port, seconds=120)
        self.items: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.items.append(line)

    def mentioning(self, text: str) -> list[str]:
        return [x for x in self.items if text in x]


def test_full_then_read_only_state_dir_keeps_deny_daemon_and_alerts(topo, tmp_path):
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "hardening", str(state)], check=True)
    try:
        _full_then_read_only(topo, tmp_path, state)
    finally:
        topo.close()  # the daemon holds files on the tmpfs: stop everything first
        subprocess.run(["umount", "-l", str(state)], check=False)


def _full_then_read_only(topo: Topology, tmp_path: Path, state: Path) -> None:
    topo.start_dns_server(RECORDS, tmp_path, ttl=1)
    receiver = Receiver(topo, 18099)
    os.environ["HARDENING_WEBHOOK_URL"] = "http://127.0.0.1:18099/webhook"
    try:
        s = start(topo, tmp_path, ALERTING)
    finally:
        os.environ.pop("HARDENING_WEBHOOK_URL")
    assert not topo.probe("tcp", OUTSIDE, 1001)["ok"]
    assert wait_for(lambda: receiver.mentioning(":1001/"), 10), receiver.items
    # disk full: one file takes every free block
    subprocess.run(["dd", "if=/dev/zero", f"of={state}/filler", "bs=64k"], capture_output=True)
    assert not topo.probe("tcp", OUTSIDE, 1002)["ok"]
    s.wait_event("egress_attempt", layer="netfilter", dst_port=1002)
    assert wait_for(lambda: receiver.mentioning(":1002/"), 10), s.log()  # still attempted
    # read-only: free the space, then in the daemon's mount namespace lay a read-only bind of
    # the state dir over itself (a plain ro remount is refused while files are open for
    # writing: EBUSY); every path the daemon opens from now on is read-only
    (state / "filler").unlink()
    in_daemon = ("nsenter", "-t", str(s.proc.pid), "-m", "mount")
    subprocess.run([*in_daemon, "--bind", str(state), str(state)], check=True)
    subprocess.run([*in_daemon, "-o", "remount,bind,ro", str(state)], check=True)
    assert not topo.probe("tcp", OUTSIDE, 1003)["ok"]
    s.wait_event("egress_attempt", layer="netfilter", dst_port=1003)
    assert wait_for(lambda: receiver.mentioning(":1003/"), 10), s.log()
    editor_save(tmp_path / "policy.yaml", ALERTING.replace("5433", "5434"))
    # the reload is applied although applied.json cannot be written (logged as an error)
    s.wait_event("policy_reloaded", timeout=10)
    assert not s.events("reload_rejected"), s.log()
    allowed = topo.run("app", "ipset", "list", "sentinel-allow4").stdout
    assert "198.18.0.2,tcp:5434" in allowed and "198.18.0.2,tcp:5433" not in allowed, allowed
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]
    assert not topo.probe("tcp", OUTSIDE, 443)["ok"]
    assert s.proc.poll() is None, s.log()
    assert topo.outside_packets() == 0

    def errors() -> str:
        return "".join(x for x in s.raw if '"level": "error"' in x or '"level": "warning"' in x)

    assert "No space left on device" in errors() or "disk is full" in errors(), s.log()
    assert wait_for(lambda: "Read-only file system" in errors(), 5), s.log()


# --- pure: the resolver's parser on oversized and hostile names (no root) --------------------
def _question(*labels: bytes) -> bytes:
    name = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"


def test_name_length_limit_is_rfc_1035s_255_octets():
    from sentinel.resolver.server import parse_query

    longest = _question(*[b"a" * 63] * 3, b"a" * 61)  # 3*64 + 62 + 1 = 255 octets
    assert parse_query(longest) is not None
    assert parse_query(_question(*[b"a" * 63] * 3, b"a" * 62)) is None  # 256 octets
    assert parse_query(_question(*[b"a"] * 255)) is None


def test_hostile_label_bytes_are_escaped_not_passed_on():
    from sentinel.resolver.server import parse_query

    q = parse_query(_question(b"A\x1b[0m\x00\n\\.", b"Example", b"com"))
    assert q is not None and q.name == "a\\027[0m\\000\\010\\092\\046.example.com"
    assert q.question.startswith(b"\x09A\x1b")  # echoed exactly as asked
    # one label with a dot in it is not the allowlisted two-label name
    assert parse_query(_question(b"cache.internal")).name == "cache\\046internal"
