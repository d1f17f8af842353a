"""The in-process guard without the namespace topology.

Guarded child Pythons run in a private, empty network namespace (`unshare -n`, loopback only),
so even a guard that failed open could not send a packet anywhere: an allowed non-loopback
connect ends in ENETUNREACH, a blocked one in SecurityError.
"""

from __future__ import annotations

import ipaddress
import json
import marshal
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import needs_tools, unavailable

from sentinel.guard import PTH_FILE, RUNTIME_FILE, guard_path
from sentinel.guard.compile import (
    allowlist_path,
    compile_allowlist,
    guard_allowlist_path,
    write_allowlist,
)
from sentinel.guard.receiver import GuardReceiver, guard_processes
from sentinel.policy.load import load_policy, parse_policy

PYTHON = sys.executable
POLICY = """\
version: 1
mode: enforce
allow:
  - {name: api, host: api.test, ports: [8080], protocol: tcp}
  - {name: metrics, host: 198.18.9.9, ports: [9100], protocol: udp}
  - {name: lan, cidr: 198.18.7.0/24, ports: [443]}
"""
PINS = {"api.test": [ipaddress.ip_address("198.18.0.2"), ipaddress.ip_address("2001:db8::2")]}

# Helpers shared with the child scripts: classify an outcome without hiding the exception.
CHILD_PRELUDE = """\
import json, socket, sys, time
try:
    from sentinel_guard import SecurityError, status
except Exception:  # a broken or missing guard module: the deny-all hook is what is tested
    SecurityError = None
    def status():
        return {"installed": False}
RESULTS = {}

def chain(exc, seen=None):
    seen = seen if seen is not None else set()
    if exc is None or id(exc) in seen:
        return
    seen.add(id(exc))
    yield exc
    for attr in ("__cause__", "__context__", "reason", "os_error"):
        sub = getattr(exc, attr, None)
        if isinstance(sub, BaseException):
            yield from chain(sub, seen)
    for sub in list(getattr(exc, "exceptions", ())) + list(getattr(exc, "args", ())):
        if isinstance(sub, BaseException):
            yield from chain(sub, seen)

def outcome(fn):
    try:
        value = fn()
        return "ok:" + str(value)[:60]
    except BaseException as exc:
        for sub in chain(exc):
            if SecurityError is not None and isinstance(sub, SecurityError):
                return "security:" + str(sub)
        return "error:%s:%s" % (type(exc).__name__, str(exc)[:80])

def connect(host, port, family=socket.AF_INET, kind=socket.SOCK_STREAM):
    s = socket.socket(family, kind)
    s.settimeout(2)
    try:
        s.connect((host, port))
    finally:
        s.close()
"""


def needs_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (private network namespace)")
    needs_tools("unshare")


def write_policy(tmp_path: Path, text: str = POLICY) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def guard_env(state: Path, policy: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.update(
        PYTHONPATH=str(guard_path()),
        SENTINEL_STATE_DIR=str(state),
        SENTINEL_GUARD_HEARTBEAT="0.2",
    )
    if policy is not None:
        env["SENTINEL_POLICY"] = str(policy)
    env.update(extra)
    return env


def run_child(
    tmp_path: Path,
    body: str,
    env: dict[str, str],
    python: str = PYTHON,
    timeout: float = 30,
    name: str = "child.py",
) -> subprocess.CompletedProcess:
    """Run CHILD_PRELUDE + body in a private network namespace; the script prints RESULTS."""
    argv = child_argv(tmp_path, body, python, name)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def child_argv(tmp_path: Path, body: str, python: str = PYTHON, name: str = "child.py") -> list:
    """The command that runs CHILD_PRELUDE + body in a private network namespace (lo up)."""
    script = tmp_path / name
    script.write_text(CHILD_PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(RESULTS))\n")
    cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    return [*cmd, python, str(script)]


def spawn_child(tmp_path: Path, body: str, env: dict[str, str]) -> subprocess.Popen:
    """The same child, started: its lines read as they come (a "ready" first, say)."""
    argv = child_argv(tmp_path, body)
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def pth_venv(venv: Path) -> Path:
    """A fresh venv (no pip) whose site-packages holds the guard's .pth loader and its runtime,
    as docs/guard.md installs the .pth form; returns that site-packages."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next(venv.glob("lib/python3*/site-packages"))
    shutil.copy(PTH_FILE, site)
    shutil.copy(RUNTIME_FILE, site)
    return site


def results(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Collector:
    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list:
        return [e for e in self.events if e.kind == kind]

    def wait(self, kind: str, count: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.of(kind)) < count:
            time.sleep(0.02)
        return self.of(kind)


@pytest.fixture
def armed(tmp_path, state_dir):
    """A policy, its compiled allowlist and a live receiver."""
    policy_path = write_policy(tmp_path)
    write_allowlist(load_policy(policy_path), PINS, state_dir)
    collector = Collector()
    receiver = GuardReceiver(state_dir, collector, status_every=0.1).start()
    try:
        yield policy_path, collector, receiver
    finally:
        receiver.stop()


# --- the compiled allowlist ---------------------------------------------------------------
def test_compile_allowlist_entries_and_hash():
    policy = parse_policy(POLICY, "p.yaml")
    doc = compile_allowlist(policy, PINS)
    assert doc["format"] == "sentinel-guard-allowlist/2"
    assert doc["policy_sha256"] == policy.sha256 and doc["mode"] == "enforce"
    assert doc["entry_count"] == 3
    api, metrics = doc["entries"]
    assert api == {
        "name": "api",
        "host": "api.test",
        "ports": [8080],
        "protocol": "tcp",
        "addresses": ["198.18.0.2", "2001:db8::2"],
    }
    assert metrics["addresses"] == ["198.18.9.9"] and metrics["protocol"] == "udp"
    lan = {"protocol": "tcp", "ports": [443], "family": 4, "prefix": 24, "networks": "c6120700"}
    assert doc["nets"] == [lan]  # 198.18.7.0/24: one packed network in its group's blob
    assert compile_allowlist(policy, {})["entries"][0]["addresses"] == []  # unpinned: denied


def test_allowlist_records_the_stat_of_the_policy_file_it_hashed(tmp_path):
    path = write_policy(tmp_path)
    st = path.stat()
    assert compile_allowlist(load_policy(path), PINS)["policy_stat"] == [st.st_size, st.st_mtime_ns]
    assert compile_allowlist(parse_policy(POLICY, "p.yaml"), PINS)["policy_stat"] is None
    policy = load_policy(path)
    path.write_text(POLICY + "# edited after loading\n")  # the file no longer holds those bytes
    assert compile_allowlist(policy, PINS)["policy_stat"] is None


def test_write_allowlist_is_atomic_and_world_readable(tmp_path):
    policy = parse_policy(POLICY, "p.yaml")
    path = write_allowlist(policy, PINS, tmp_path / "state")
    assert path == allowlist_path(tmp_path / "state")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text())["entries"][0]["host"] == "api.test"
    fast = guard_allowlist_path(tmp_path / "state")
    assert stat.S_IMODE(fast.stat().st_mode) == 0o644
    # no temp files left
    assert sorted(p.name for p in path.parent.iterdir()) == ["allowlist.json", "allowlist.marshal"]
    raw = fast.read_bytes()
    magic, header, payload = raw.split(b"\n", 2)
    assert magic == b"sentinel-guard-allowlist/4"
    size, check = header.split(b" ")  # the payload's length and check, 8 hex digits each
    assert (len(size), len(check)) == (8, 8)
    assert int(size, 16) == len(payload)
    assert int(check, 16) == int.from_bytes(payload, "little") % (2**30 - 35)
    doc = marshal.loads(payload)
    assert doc["format"] == "sentinel-guard-allowlist/4" and doc["policy_sha256"] == policy.sha256
    tcp = ("tcp", frozenset({8080}))
    assert doc["names"] == {"api.test": (tcp,)}  # the literal host 198.18.9.9 is no name
    assert doc["addrs"] == {
        bytes([198, 18, 0, 2]): (tcp,),
        bytes.fromhex("20010db8" + "0" * 23 + "2"): (tcp,),
        bytes([198, 18, 9, 9]): (("udp", frozenset({9100})),),
    }
    assert doc["nets"] == ((4, 24, bytes([198, 18, 7, 0]), "tcp", frozenset({443})),)
    assert doc["rules"] == 3


# --- enforce / audit / off ----------------------------------------------------------------
def test_enforce_blocks_names_addresses_ports_and_reports_the_frame(tmp_path, state_dir, armed):
    needs_root()
    policy_path, collector, receiver = armed
    body = """
    def blocked_name():
        return socket.getaddrinfo("telemetry.example", 443)
    RESULTS["name"] = outcome(blocked_name)
    RESULTS["gethostbyname"] = outcome(lambda: socket.gethostbyname("evil.example"))
    RESULTS["ip_literal"] = outcome(lambda: connect("198.18.5.5", 443))
    RESULTS["ipv6"] = outcome(lambda: connect("2001:db8::5", 443, socket.AF_INET6))
    RESULTS["wrong_port_ip"] = outcome(lambda: connect("198.18.0.2", 80))
    RESULTS["wrong_port_name"] = outcome(lambda: socket.getaddrinfo("api.test", 443))
    RESULTS["name_in_connect"] = outcome(lambda: connect("evil.example", 80))
    RESULTS["connect_ex"] = outcome(
        lambda: socket.socket().connect_ex(("198.18.5.5", 443)))
    RESULTS["udp_sendto"] = outcome(
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("198.18.5.5", 53)))
    RESULTS["udp_wrong_proto"] = outcome(
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("198.18.0.2", 8080)))
    RESULTS["allowed_ip"] = outcome(lambda: connect("198.18.0.2", 8080))
    RESULTS["allowed_ip6"] = outcome(lambda: connect("2001:db8::2", 8080, socket.AF_INET6))
    RESULTS["allowed_cidr"] = outcome(lambda: connect("198.18.7.20", 443))
    RESULTS["allowed_udp"] = outcome(
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("198.18.9.9", 9100)))
    RESULTS["mapped_v4"] = outcome(lambda: connect("::ffff:198.18.5.5", 443, socket.AF_INET6))
    RESULTS["reverse_blocked"] = outcome(lambda: socket.gethostbyaddr("198.18.5.5"))
    RESULTS["reverse_pinned"] = outcome(lambda: socket.gethostbyaddr("198.18.0.2"))
    RESULTS["reverse_loopback"] = outcome(lambda: socket.gethostbyaddr("127.0.0.1"))
    RESULTS["localhost"] = outcome(lambda: socket.getaddrinfo("localhost", 80))
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
    RESULTS["loopback"] = outcome(lambda: connect("127.0.0.1", srv.getsockname()[1]))
    a, b = socket.socketpair(); a.sendall(b"x")
    RESULTS["unix"] = outcome(lambda: b.recv(1))
    RESULTS["status"] = status()
    """
    out = results(run_child(tmp_path, body, guard_env(state_dir, policy_path)))
    for case in (
        "name", "gethostbyname", "ip_literal", "ipv6", "wrong_port_ip", "wrong_port_name",
        "name_in_connect", "connect_ex", "udp_sendto", "udp_wrong_proto", "mapped_v4",
        "reverse_blocked",
    ):  # fmt: skip
        assert out[case].startswith("security:[Errno 13] sentinel guard:"), (case, out[case])
    assert "'telemetry.example' is not allowlisted" in out["name"]
    assert "198.18.5.5 port 443/tcp" in out["ip_literal"]
    assert "2001:db8::5 port 443/tcp" in out["ipv6"]
    assert "api.test port 443" in out["wrong_port_name"]
    for case in ("allowed_ip", "allowed_ip6", "allowed_cidr", "allowed_udp"):
        assert "security" not in out[case] and "unreachable" in out[case].lower(), out[case]
    assert "security" not in out["reverse_pinned"] and out["reverse_loopback"].startswith("ok:")
    assert out["localhost"].startswith("ok:") and out["loopback"] == "ok:None"
    assert out["unix"] == "ok:b'x'"
    assert out["status"]["mode"] == "enforce" and not out["status"]["fail_closed"]

    events = collector.wait("egress_attempt", 12)
    assert len(events) == 12, [e.detail.get("reason") for e in events]
    first = next(e for e in events if e.dst_name == "telemetry.example")
    assert first.layer == "guard" and first.verdict == "blocked" and first.protocol == "dns"
    assert first.stack.endswith("in blocked_name") and "child.py:" in first.stack
    assert first.id in out["name"]  # the error message carries the correlation id
    assert first.exe and first.pid and first.detail["event"] == "socket.getaddrinfo"
    assert any("child.py" in line for line in first.detail["traceback"])
    literal = next(e for e in events if e.dst_ip == "198.18.5.5" and e.protocol == "tcp")
    assert literal.dst_port == 443 and literal.detail["dropped"] == 0
    assert {e.pid for e in events} == {first.pid}


def test_audit_mode_reports_without_raising(tmp_path, state_dir, armed):
    needs_root()
    policy_path, collector, _ = armed
    body = """
    RESULTS["name"] = outcome(lambda: socket.getaddrinfo("telemetry.example", 443))
    RESULTS["ip"] = outcome(lambda: connect("198.18.5.5", 443))
    RESULTS["mode"] = status()["mode"]
    """
    env = guard_env(state_dir, policy_path, SENTINEL_GUARD="audit")
    out = results(run_child(tmp_path, body, env))
    assert out["mode"] == "audit"
    assert out["name"].startswith("error:gaierror")  # went on to (fail to) resolve
    assert "unreachable" in out["ip"].lower()
    events = collector.wait("egress_attempt", 2)
    assert sorted(e.verdict for e in events) == ["audited", "audited"]


def test_policy_mode_audit_is_used_when_env_unset(tmp_path, state_dir):
    needs_root()
    policy_path = write_policy(tmp_path, POLICY.replace("mode: enforce", "mode: audit"))
    write_allowlist(load_policy(policy_path), PINS, state_dir)
    body = 'RESULTS["mode"] = status()["mode"]\n'
    assert results(run_child(tmp_path, body, guard_env(state_dir, policy_path)))["mode"] == "audit"


def test_off_mode_installs_nothing(tmp_path, state_dir, armed):
    needs_root()
    policy_path, collector, _ = armed
    body = """
    RESULTS["ip"] = outcome(lambda: connect("198.18.5.5", 443))
    RESULTS["status"] = status()
    """
    out = results(
        run_child(tmp_path, body, guard_env(state_dir, policy_path, SENTINEL_GUARD="off"))
    )
    assert "unreachable" in out["ip"].lower() and out["status"]["installed"] is False
    time.sleep(0.3)
    assert collector.events == []


# --- failing closed -------------------------------------------------------------------------
# a host that claims to be loopback and a socket subclass that claims to be AF_UNIX
LIARS = """
class Liar(str):
    def __eq__(self, other):
        return True
    def __hash__(self):
        return hash("localhost")
    def __str__(self):
        return "127.0.0.1"
    def startswith(self, *args):
        return True
class Sneaky(socket.socket):
    @property
    def family(self):
        return socket.AF_UNIX
def sneaky():
    s = Sneaky()
    s.settimeout(2)
    try:
        s.connect(("198.18.0.2", 8080))
    finally:
        s.close()
class Twin(tuple):  # says it is ("127.0.0.1", 8080); C connects to its real items
    def __getitem__(self, i):
        return ("127.0.0.1", 8080)[i]
    def __iter__(self):
        return iter(("127.0.0.1", 8080))
    def __len__(self):
        return 2
def twin():
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(Twin(("198.18.0.2", 8080)))
    finally:
        s.close()
RESULTS["liar"] = outcome(lambda: connect(Liar("198.18.0.2"), 8080))
RESULTS["sneaky"] = outcome(sneaky)
RESULTS["twin"] = outcome(twin)
"""

FAIL_BODY = (
    LIARS
    + """
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
RESULTS["loopback"] = outcome(lambda: connect("127.0.0.1", srv.getsockname()[1]))
RESULTS["ip"] = outcome(lambda: connect("198.18.0.2", 8080))
RESULTS["name"] = outcome(lambda: socket.getaddrinfo("api.test", 8080))
RESULTS["status"] = status()
"""
)


@pytest.mark.parametrize(
    "problem",
    ["unreadable", "unset", "mismatch", "no_allowlist", "truncated", "damaged", "old_format"],
)
def test_enforce_fails_closed_when_the_policy_cannot_be_verified(
    tmp_path, state_dir, armed, problem
):
    needs_root()
    policy_path, collector, _ = armed
    fast = guard_allowlist_path(state_dir)
    raw = fast.read_bytes()
    if problem == "unreadable":
        policy_path = tmp_path  # a directory: open() fails even for root
    elif problem == "mismatch":
        policy_path.write_text(POLICY + "# edited after compiling\n")
    elif problem == "no_allowlist":
        allowlist_path(state_dir).unlink()
        fast.unlink()
    elif problem == "truncated":
        fast.write_bytes(raw[:-7])
    elif problem == "damaged":  # one flipped bit in the rules
        fast.write_bytes(raw[:-20] + bytes([raw[-20] ^ 0x10]) + raw[-19:])
    elif problem == "old_format":  # a /3 file, as an older sentinel wrote it
        payload = raw.split(b"\n", 2)[2]
        fast.write_bytes(b"sentinel-guard-allowlist/3\n" + payload)
    env = guard_env(state_dir, None if problem == "unset" else policy_path)
    proc = run_child(tmp_path, FAIL_BODY, env)
    out = results(proc)
    assert out["loopback"] == "ok:None"
    assert out["ip"].startswith("security:") and "fail closed" in out["ip"]
    for case in ("liar", "sneaky", "twin"):
        assert out[case].startswith("security:"), (case, out)
    assert out["name"].startswith("security:")
    assert out["status"]["fail_closed"] is True
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "FAIL CLOSED" in lines[0], proc.stderr
    reason = {
        "unreadable": "cannot read policy",
        "unset": "SENTINEL_POLICY is not set",
        "mismatch": "compiled from policy sha256",
        "no_allowlist": "cannot read allowlist",
        "truncated": f"allowlist {fast} is truncated: its header says",
        "damaged": f"allowlist {fast} is damaged: its rules do not match the check",
        "old_format": f"allowlist {fast} is format 'sentinel-guard-allowlist/3'; this guard "
        "reads sentinel-guard-allowlist/4",
    }[problem]
    assert reason in lines[0]
    assert reason in collector.wait("guard_fail_closed", 1)[0].detail["reason"]


def test_broken_guard_module_installs_deny_all(tmp_path, state_dir, armed):
    needs_root()
    policy_path, _, _ = armed
    broken = tmp_path / "broken"
    shutil.copytree(guard_path(), broken)
    (broken / "sentinel_guard.py").write_text("raise RuntimeError('corrupt install')\n")
    env = guard_env(state_dir, policy_path, PYTHONPATH=str(broken))
    proc = run_child(tmp_path, FAIL_BODY.replace('RESULTS["status"] = status()', ""), env)
    out = results(proc)
    assert out["loopback"] == "ok:None"
    assert out["ip"].startswith("error:SecurityError:[Errno 13] sentinel guard (deny-all)")
    for case in ("liar", "sneaky", "twin"):
        assert out[case].startswith("error:SecurityError:[Errno 13] sentinel guard (deny-all)")
    assert out["name"].startswith("error:SecurityError")
    assert "FAIL CLOSED: cannot import sentinel_guard" in proc.stderr


def test_pth_loader_in_a_fresh_venv(tmp_path, state_dir, armed):
    needs_root()
    policy_path, collector, _ = armed
    venv = tmp_path / "venv"
    site = pth_venv(venv)
    env = guard_env(state_dir, policy_path)
    del env["PYTHONPATH"]
    body = """
    import urllib.request
    RESULTS["urllib"] = outcome(lambda: urllib.request.urlopen("http://telemetry.example/", timeout=2))
    RESULTS["ip"] = outcome(lambda: connect("198.18.5.5", 443))
    RESULTS["origin"] = status()["origin"]
    import sys
    RESULTS["sitecustomize"] = "sitecustomize" in sys.modules
    """
    out = results(run_child(tmp_path, body, env, python=str(venv / "bin" / "python")))
    assert out["origin"] == "pth" and not out["sitecustomize"]
    assert out["urllib"].startswith("security:") and out["ip"].startswith("security:")
    assert len(collector.wait("egress_attempt", 2)) == 2
    # and without the runtime next to it, the .pth loader fails closed
    (site / "sentinel_guard.py").unlink()
    body = LIARS + 'RESULTS["ip"] = outcome(lambda: connect("198.18.5.5", 443))'
    proc = run_child(tmp_path, body, env, python=str(venv / "bin" / "python"))
    out = results(proc)
    assert "deny-all" in out["ip"] and "FAIL CLOSED" in proc.stderr
    assert all("deny-all" in out[case] for case in ("liar", "sneaky", "twin")), out


def test_pth_line_without_its_file_refuses_every_network_call(tmp_path):
    """The .pth line reads its deny-all fallback from its own file (site.addpackage's `fullname`);
    run where there is no such file, it still fails closed: every network call is refused,
    loopback too (no root needed: nothing is sent, the hook refuses before C does)."""
    line = next(x for x in PTH_FILE.read_text().splitlines() if x.startswith("import "))
    code = f"""
import sys
sys.modules["sentinel_guard"] = None  # the guard cannot be imported
exec({line!r})
import socket
out = []
for call in (lambda: socket.getaddrinfo("localhost", 80),
             lambda: socket.socket().connect(("127.0.0.1", 9)),
             lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 9))):
    try:
        call()
        out.append("ok")
    except PermissionError as exc:
        out.append(str(exc))
print("|".join(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "PYTHON"))}
    proc = subprocess.run(
        [PYTHON, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    outcomes = proc.stdout.strip().split("|")
    assert len(outcomes) == 3, proc.stdout
    assert all(o.startswith("[Errno 13] sentinel guard (deny-all)") for o in outcomes), outcomes


# --- reporting without blocking -------------------------------------------------------------
def test_absent_receiver_never_blocks_and_drops_are_counted(tmp_path, state_dir):
    needs_root()
    policy_path = write_policy(tmp_path)
    write_allowlist(load_policy(policy_path), PINS, state_dir)
    go = tmp_path / "go"
    body = f"""
    import os
    N = 3000
    worst = 0.0
    start = time.perf_counter()
    for i in range(N):
        t = time.perf_counter()
        try:
            socket.getaddrinfo("exfil-%d.example" % i, 443)
        except SecurityError:
            pass
        worst = max(worst, time.perf_counter() - t)
    RESULTS["per_call_us"] = (time.perf_counter() - start) / N * 1e6
    RESULTS["worst_ms"] = worst * 1e3
    deadline = time.monotonic() + 20  # until the reporter has tried (and failed) to send all
    while time.monotonic() < deadline:
        c = status()["counters"]
        if c["dropped_queue_full"] + c["dropped_send_failed"] == N:
            break
        time.sleep(0.02)
    print("ready", flush=True)
    deadline = time.monotonic() + 10
    while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
        time.sleep(0.02)
    RESULTS["last"] = outcome(lambda: socket.getaddrinfo("after.example", 443))
    RESULTS["counters"] = status()["counters"]
    """
    proc = spawn_child(tmp_path, body, guard_env(state_dir, policy_path))
    collector = Collector()
    try:
        assert proc.stdout.readline().strip() == "ready"
        with GuardReceiver(state_dir, collector):
            go.touch()
            out = json.loads(proc.stdout.readline())
            events = collector.wait("egress_attempt", 1)
    finally:
        proc.kill() if proc.poll() is None else None
        proc.communicate(timeout=10)
    assert out["per_call_us"] < 500, out  # microseconds, not a socket timeout
    assert out["worst_ms"] < 100, out
    assert len(events) == 1 and events[0].dst_name == "after.example"
    assert events[0].detail["dropped"] == 3000  # every undelivered report is accounted for
    assert out["counters"]["dropped_total"] == 3000 and out["counters"]["blocked"] == 3001


def test_background_telemetry_retries_are_blocked_and_counted(tmp_path, state_dir, armed):
    needs_root()
    policy_path, collector, _ = armed
    body = """
    import threading, urllib.request
    attempts = {"n": 0, "security": 0, "other": 0}
    def telemetry():  # a posthog-style client: retries with backoff, swallows errors
        for _ in range(25):
            attempts["n"] += 1
            try:
                urllib.request.urlopen("https://us.telemetry.example/capture", timeout=2)
            except OSError as exc:
                if isinstance(getattr(exc, "reason", exc), SecurityError):
                    attempts["security"] += 1
                else:
                    attempts["other"] += 1
            time.sleep(0.005)
    t = threading.Thread(target=telemetry, daemon=True)
    t.start()
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
    work = 0
    while t.is_alive() and work < 10000:
        connect("127.0.0.1", srv.getsockname()[1]); srv.accept()[0].close(); work += 1
    t.join(10)
    RESULTS.update(attempts, work=work, alive=t.is_alive())
    """
    out = results(run_child(tmp_path, body, guard_env(state_dir, policy_path)))
    assert out["n"] == 25 and out["security"] == 25 and out["other"] == 0
    assert out["work"] > 0 and out["alive"] is False
    events = collector.wait("egress_attempt", 25)
    assert len(events) + sum(e.detail["dropped"] for e in events) == 25
    assert {e.dst_name for e in events} == {"us.telemetry.example"}
    assert all("in telemetry" in e.stack for e in events)


def test_heartbeats_mark_processes_active_then_gone(tmp_path, state_dir, armed):
    needs_root()
    policy_path, collector, receiver = armed
    body = 'time.sleep(1.0)\nRESULTS["pid"] = __import__("os").getpid()\n'
    out = results(run_child(tmp_path, body, guard_env(state_dir, policy_path)))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        b.detail["state"] == "exit" for b in collector.of("guard_heartbeat")
    ):
        time.sleep(0.02)
    beats = collector.of("guard_heartbeat")
    assert len(beats) >= 3 and beats[0].detail["counters"]["checks"] >= 0
    assert beats[-1].detail["state"] == "exit"  # it said goodbye at exit
    proc = receiver.processes[beats[0].detail["sender"]["identity"]]
    assert proc.mode == "enforce" and proc.policy_sha256 == load_policy(policy_path).sha256
    assert proc.state == "exit" and not proc.active()
    assert {b.pid for b in beats} == {out["pid"]}  # the kernel-verified sender pid
    on_disk = guard_processes(state_dir)
    assert str(beats[0].pid) in on_disk["processes"]


def test_receiver_survives_garbage(state_dir):
    collector = Collector()
    with GuardReceiver(state_dir, collector) as receiver:
        tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        junk = [b"", b"\xff\xfe", b"not json", b"[1,2]", b'{"v": 2}', b'{"v":1,"type":"x"}',
                b'{"v":1,"type":"egress_attempt"}', b"{" * 5000, os.urandom(4000)]  # fmt: skip
        for data in junk:
            tx.sendto(data, str(receiver.path))
        good = {"v": 1, "type": "egress_attempt", "pid": os.getpid(), "exe": "x", "host": "a.b",
                "port": 1, "protocol": "dns", "id": "c0ffee", "frame": "f.py:1 in g"}  # fmt: skip
        tx.sendto(json.dumps(good).encode(), str(receiver.path))
        events = collector.wait("egress_attempt", 1)
        deadline = time.monotonic() + 5
        while receiver.received < len(junk) + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert receiver.garbage == len(junk)
    assert events[0].id == "c0ffee" and events[0].pid == os.getpid() and events[0].dst_name == "a.b"


def test_forked_child_keeps_the_guard_and_reports_with_its_own_pid(tmp_path, state_dir, armed):
    needs_root()
    policy_path, collector, _ = armed
    body = """
    import os
    pid = os.fork()
    if pid == 0:
        try:
            connect("198.18.5.5", 443)
            os._exit(1)
        except SecurityError:
            deadline = time.monotonic() + 10  # the reporter (restarted after fork) sends it
            while status()["counters"]["sent"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            os._exit(0)
    _, code = os.waitpid(pid, 0)
    RESULTS["child"] = pid
    RESULTS["code"] = code
    """
    out = results(run_child(tmp_path, body, guard_env(state_dir, policy_path)))
    assert out["code"] == 0
    events = collector.wait("egress_attempt", 1)
    assert events and events[0].pid == out["child"]


# --- pins move, the guard follows -------------------------------------------------------------
def test_running_guard_picks_up_new_pins(tmp_path, state_dir, armed):
    needs_root()
    policy_path, _, _ = armed
    flag = tmp_path / "rewritten"
    body = f"""
    import os
    RESULTS["old_before"] = outcome(lambda: connect("198.18.0.2", 8080))  # allowed, remembered
    RESULTS["before"] = outcome(lambda: connect("198.18.0.77", 8080))
    print("ready", flush=True)
    deadline = time.monotonic() + 10
    while not os.path.exists({str(flag)!r}) and time.monotonic() < deadline:
        time.sleep(0.01)
    RESULTS["first"] = outcome(lambda: connect("198.18.0.77", 8080))  # no wait for the poll
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        if "security" not in outcome(lambda: connect("198.18.0.77", 8080)):
            break
        time.sleep(0.02)
    RESULTS["took"] = time.monotonic() - t0
    RESULTS["after"] = outcome(lambda: connect("198.18.0.77", 8080))
    RESULTS["old"] = outcome(lambda: connect("198.18.0.2", 8080))
    RESULTS["generation"] = status()["generation"]
    """
    proc = spawn_child(tmp_path, body, guard_env(state_dir, policy_path))
    try:
        assert proc.stdout.readline().strip() == "ready"
        moved = {"api.test": [ipaddress.ip_address("198.18.0.77")]}
        write_allowlist(load_policy(policy_path), moved, state_dir)
        flag.touch()
        out = json.loads(proc.stdout.readline())
    finally:
        proc.kill() if proc.poll() is None else None
        proc.communicate(timeout=10)
    assert out["before"].startswith("security:")
    assert "unreachable" in out["first"].lower(), out  # re-checked before refusing
    assert "unreachable" in out["after"].lower() and out["took"] < 2.0, out
    assert "unreachable" in out["old_before"].lower(), out
    # allowed (and remembered by the hook's fast path) before; the new pins dropped it
    assert out["old"].startswith("security:") and out["generation"] == 2


def test_fast_path_remembers_an_allowed_address_per_socket_type(tmp_path, state_dir, armed):
    """The hook answers a repeated allowed connect without a decision, and only for the socket
    family and type it was allowed for: UDP to a TCP-only address is still refused."""
    needs_root()
    policy_path, _, _ = armed
    body = """
    from sentinel_guard import status
    RESULTS["first"] = outcome(lambda: connect("198.18.0.2", 8080))
    checks = status()["counters"]["checks"]
    for _ in range(20):
        RESULTS["again"] = outcome(lambda: connect("198.18.0.2", 8080))
    RESULTS["decisions"] = status()["counters"]["checks"] - checks
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    RESULTS["udp"] = outcome(lambda: udp.sendto(b"x", ("198.18.0.2", 8080)))
    RESULTS["udp_again"] = outcome(lambda: udp.sendto(b"x", ("198.18.0.2", 8080)))
    RESULTS["udp_connect"] = outcome(
        lambda: connect("198.18.0.2", 8080, kind=socket.SOCK_DGRAM))
    """
    out = results(run_child(tmp_path, body, guard_env(state_dir, policy_path)))
    for case in ("first", "again"):
        assert "security" not in out[case] and "unreachable" in out[case].lower(), out
    assert out["decisions"] == 0, out  # 20 connects, no decision: the fast path answered
    for case in ("udp", "udp_again", "udp_connect"):
        assert out[case].startswith("security:") and "port 8080/udp" in out[case], out


def test_str_and_int_subclasses_cannot_steer_a_decision_or_match_a_remembered_one(
    tmp_path, state_dir, armed
):
    """CPython's C code connects to what a str/int subclass holds; the subclass's own __eq__,
    __hash__ and __str__ (claiming to be an allowed address, name or port) change nothing."""
    needs_root()
    policy_path, _, _ = armed
    body = """
    class Liar(str):
        def __eq__(self, other):
            return True
        def __hash__(self):
            return hash(self.claim)
        def __str__(self):
            return "api.test"
        def lower(self):
            return "api.test"
        def rstrip(self, *args):
            return self
    def liar(text, claim):
        value = Liar(text)
        value.claim = claim
        return value
    class LiarInt(int):
        def __eq__(self, other):
            return True
        def __hash__(self):
            return hash(8080)
    RESULTS["allowed"] = outcome(lambda: connect("198.18.0.2", 8080))  # remembered
    RESULTS["allowed_name"] = outcome(lambda: socket.getaddrinfo("api.test", 8080))
    RESULTS["ip"] = outcome(lambda: connect(liar("198.18.5.5", "198.18.0.2"), 8080))
    RESULTS["ip_again"] = outcome(lambda: connect(liar("198.18.5.5", "198.18.0.2"), 8080))
    RESULTS["port"] = outcome(lambda: connect("198.18.0.2", LiarInt(443)))
    RESULTS["name"] = outcome(lambda: socket.getaddrinfo(liar("evil.example", "api.test"), 8080))
    RESULTS["name_connect"] = outcome(lambda: connect(liar("evil.example", "api.test"), 8080))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    RESULTS["sendto"] = outcome(
        lambda: udp.sendto(b"x", (liar("198.18.5.5", "198.18.0.2"), 8080)))
    class Twin(tuple):  # says it is the allowed ("198.18.0.2", 8080)
        def __getitem__(self, i):
            return ("198.18.0.2", 8080)[i]
        def __iter__(self):
            return iter(("198.18.0.2", 8080))
        def __hash__(self):
            return hash(("198.18.0.2", 8080))
        def __eq__(self, other):
            return True
    RESULTS["tuple"] = outcome(lambda: socket.socket().connect(Twin(("198.18.5.5", 8080))))
    RESULTS["tuple_udp"] = outcome(lambda: udp.sendto(b"x", Twin(("198.18.5.5", 8080))))
    """
    out = results(run_child(tmp_path, body, guard_env(state_dir, policy_path)))
    assert "security" not in out["allowed"] and "unreachable" in out["allowed"].lower(), out
    assert not out["allowed_name"].startswith("security:"), out  # allowed (no DNS here)
    for case in ("ip", "ip_again", "port", "name", "name_connect", "sendto", "tuple", "tuple_udp"):
        assert out[case].startswith("security:[Errno 13] sentinel guard:"), (case, out)
    assert "198.18.5.5 port 8080/tcp" in out["ip"] and "198.18.0.2 port 443/tcp" in out["port"]
    assert "'evil.example' is not allowlisted" in out["name"]


# --- tampering -------------------------------------------------------------------------------
def test_guard_cannot_be_uninstalled_from_python(tmp_path, state_dir, armed):
    needs_root()
    policy_path, collector, _ = armed
    body = """
    import builtins, importlib, os, sys, socket as socket_module
    import sentinel_guard
    snapshot = sentinel_guard._STATUS[0]  # kept before the attempts below clear the list
    attempts = {}
    def attempt(name, fn):
        attempts[name] = outcome(fn)
    # rebind the public module's helpers and state
    attempt("module_globals", lambda: [setattr(sentinel_guard, n, (lambda *a, **k: True))
        for n in ("_is_loopback", "_is_local_host", "_spec_allows", "_packed")])
    attempt("status_list", lambda: sentinel_guard._STATUS.clear())
    # a second boot with the guard "off", after a reload
    os.environ["SENTINEL_GUARD"] = "off"
    attempt("reload", lambda: importlib.reload(sentinel_guard).boot("attacker"))
    sys.modules.pop("sentinel_guard", None)
    # builtins and the socket module
    real_isinstance = builtins.isinstance
    builtins.isinstance = lambda *a: False
    try:
        connect("198.18.5.5", 443)
        RESULTS["ip_with_builtins_patched"] = "connected"
    except BaseException as exc:
        RESULTS["ip_with_builtins_patched"] = type(exc).__name__
    builtins.isinstance = real_isinstance
    real_connect = socket_module.socket.connect
    attempt("socket_class", lambda: setattr(socket_module.socket, "connect", real_connect))
    # dig the guard's private functions out of the garbage collector and swap their code
    import gc
    private = {getattr(o, "__qualname__", ""): o for o in gc.get_objects()
               if getattr(o, "__module__", None) == "sentinel_guard.<private>"}
    attempt("code_swap", lambda: setattr(private["_is_loopback"], "__code__",
                                         (lambda packed: True).__code__))
    deadline = time.monotonic() + 10  # both reports out before the next step silences them
    while snapshot()["counters"]["sent"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    # silence the reporter (not audited by CPython; reporting stops, enforcement does not)
    reporter = [o for o in gc.get_objects() if type(o).__name__ == "_Reporter"]
    attempt("reporter", lambda: setattr(type(reporter[0]), "send", lambda *a: True))
    RESULTS["attempts"] = attempts
    RESULTS["ip"] = outcome(lambda: connect("198.18.5.5", 443))
    RESULTS["name"] = outcome(lambda: socket.getaddrinfo("telemetry.example", 443))
    """
    out = results(run_child(tmp_path, body, guard_env(state_dir, policy_path)))
    assert out["attempts"]["code_swap"].startswith("security:"), out  # vetoed by the hook
    assert out["ip_with_builtins_patched"] == "SecurityError"
    assert out["ip"].startswith("security:"), out
    assert out["name"].startswith("security:"), out
    seen = collector.wait("egress_attempt", 2)  # the patched-builtins connect, the code swap
    tamper = [e for e in seen if e.protocol == "tamper"]
    assert tamper and "__code__" in tamper[0].detail["reason"], seen


def test_sendmsg_packet_sockets_and_local_families_as_docs_guard_says(tmp_path, state_dir, armed):
    """docs/guard.md's table: `sendmsg` is checked like `sendto`; an AF_PACKET socket is refused
    when it is bound or sends; AF_NETLINK is local and the machine's own hostname is allowed."""
    needs_root()
    policy_path, collector, _ = armed
    body = """
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    RESULTS["sendmsg"] = outcome(lambda: udp.sendmsg([b"x"], [], 0, ("198.18.5.5", 53)))
    RESULTS["sendmsg_allowed"] = outcome(lambda: udp.sendmsg([b"x"], [], 0, ("198.18.9.9", 9100)))
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)  # made: refused when it is used
    RESULTS["packet_bind"] = outcome(lambda: raw.bind(("lo", 0)))
    RESULTS["packet_sendto"] = outcome(lambda: raw.sendto(b"x" * 14, ("lo", 0)))
    RESULTS["netlink"] = outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
    RESULTS["hostname"] = outcome(lambda: socket.getaddrinfo(socket.gethostname(), 80))
    """
    out = results(run_child(tmp_path, body, guard_env(state_dir, policy_path)))
    for case in ("sendmsg", "packet_bind", "packet_sendto"):
        assert out[case].startswith("security:[Errno 13] sentinel guard:"), (case, out[case])
    assert "198.18.5.5 port 53/udp" in out["sendmsg"], out["sendmsg"]
    assert "unreachable" in out["sendmsg_allowed"].lower(), out  # checked, allowed, no route
    assert out["netlink"] == "ok:None", out
    assert "security" not in out["hostname"], out
    events = collector.wait("egress_attempt", 3)
    seen = sorted((e.protocol, e.detail["event"]) for e in events)
    assert seen == [("other", "socket.sendto"), ("raw", "socket.bind"), ("udp", "socket.sendmsg")]


def test_a_callback_that_raises_is_counted_and_the_receiver_goes_on(state_dir):
    """docs/guard.md: anything the callback raises is counted (`callback_errors`), never fatal."""
    seen: list = []

    def flaky(event) -> None:  # noqa: ANN001
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("the sink broke")

    with GuardReceiver(state_dir, flaky) as receiver:
        tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for i in range(2):
            report = {"v": 1, "type": "egress_attempt", "pid": os.getpid(), "exe": "x",
                      "host": f"a{i}.b", "port": 1, "protocol": "dns", "id": f"c0ffee{i}"}  # fmt: skip
            tx.sendto(json.dumps(report).encode(), str(receiver.path))
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [e.dst_name for e in seen] == ["a0.b", "a1.b"]  # the second after the raise
        assert receiver.callback_errors == 1
