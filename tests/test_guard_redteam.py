"""Red-team cases for the lazy guard: what hostile app code can do before its first socket.

Each case runs in a fresh guarded interpreter inside a private, empty network namespace
(test_guard_lazy.run_case): an allowed non-loopback connect ends in ENETUNREACH, a refused one in
SecurityError. Where a case is about reporting, a live receiver checks that the attempt arrived.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import needs_tools
from test_guard import Collector, needs_root, results
from test_guard_lazy import PRELUDE, guarded, run_case  # noqa: F401 - guarded is a fixture

from sentinel.guard import PTH_FILE, guard_path
from sentinel.guard.receiver import GuardReceiver

REFUSED = "SecurityError:[Errno 13] sentinel guard:"


@pytest.fixture
def receiving(tmp_path, state_dir, guarded):  # noqa: F811
    collector = Collector()
    receiver = GuardReceiver(state_dir, collector, status_every=0.1).start()
    try:
        yield guarded, collector
    finally:
        receiver.stop()


# Before the reporter made its socket (its first tick is 50 ms after start), the app hides the
# real `_socket` from anything that imports it: a fake module in sys.modules, or a finder first
# on sys.meta_path. The attempt is still refused, and it must still be *reported* (before the
# fix the report socket was taken from the fake module: every report and heartbeat was lost).
HIDE_SOCKET = {
    "fake_in_sys_modules": """
import _socket as real, types
fake = types.ModuleType("_socket")
class socket:  # not a C type: the guard must not give up on reporting
    pass
fake.socket = socket
sys.modules["_socket"] = fake
""",
    "meta_path_finder": """
import _socket as real, types
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "_socket":
            raise ImportError("no sockets for you")
        return None
sys.meta_path.insert(0, Finder())
del sys.modules["_socket"]
""",
}


@pytest.mark.parametrize("case", sorted(HIDE_SOCKET))
def test_hiding_socket_from_imports_does_not_silence_reports(tmp_path, receiving, case):
    needs_root()
    env, collector = receiving
    body = (
        HIDE_SOCKET[case]
        + """
RESULTS["bad"] = outcome(lambda: connect_with(real.socket, "198.18.5.5", 8080))
RESULTS["good"] = outcome(lambda: connect_with(real.socket, "198.18.0.2", 8080))
import time
time.sleep(0.5)  # several reporter ticks while the app still runs
"""
    )
    out = run_case(tmp_path, body, env)
    assert out["bad"].startswith(REFUSED), out
    assert "unreachable" in out["good"].lower(), out
    events = collector.wait("egress_attempt", 1)
    assert [e.dst_ip for e in events] == ["198.18.5.5"], events


# The app rewrites /etc/hosts (root in its container, or a writable bind mount): an allowlisted
# name, or a name the guard counts as local (`*.localhost`), now resolves to an address that is
# not allowlisted. Passed *by name* to connect()/sendto(), the name used to be checked and C then
# connected to whatever it resolved. Now the socket.py methods resolve the name themselves, check
# the address and hand C the literal; a name reaching the audit hook unresolved (a socket class
# the guard could not wrap, `_socket` used directly) is resolved again and every address checked.
HOSTS_BODY = """
with open("/etc/hosts", "a") as f:
    f.write("198.18.5.5 api.test evil.localhost\\n")
import socket, _socket
RESULTS["allowlisted_name"] = outcome(lambda: connect_with(socket.socket, "api.test", 8080))
RESULTS["local_name"] = outcome(lambda: connect_with(socket.socket, "evil.localhost", 8080))
def udp(cls, host):
    s = cls(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return s.sendto(b"x", (host, 8080))
    finally:
        s.close()
RESULTS["udp_local_name"] = outcome(lambda: udp(socket.socket, "evil.localhost"))
RESULTS["raw_name"] = outcome(lambda: connect_with(_socket.socket, "api.test", 8080))
RESULTS["raw_local_name"] = outcome(lambda: connect_with(_socket.socket, "evil.localhost", 8080))
RESULTS["good_literal"] = outcome(lambda: connect_with(socket.socket, "198.18.0.2", 8080))
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
RESULTS["localhost"] = outcome(lambda: connect_with(socket.socket, "localhost", srv.getsockname()[1]))
RESULTS["raw_localhost"] = outcome(
    lambda: connect_with(_socket.socket, "localhost", srv.getsockname()[1]))
"""


def run_with_own_hosts(tmp_path, body, env):
    # As run_case, plus a private mount namespace whose /etc/hosts is a copy the app may write.
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    script = tmp_path / "case.py"
    script.write_text(PRELUDE + body + "\nprint(json.dumps(RESULTS))\n")
    inner = (
        'mount --bind "$0" /etc/hosts && ip link set lo up'
        ' && sysctl -qw net.ipv4.ping_group_range="0 2147483647" && exec "$@"'
    )  # (ping sockets: unprivileged ICMP, as Docker allows by default)
    cmd = ["unshare", "-n", "-m", "--propagation", "private", "--", "sh", "-c", inner]
    proc = subprocess.run(
        [*cmd, str(hosts), sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return results(proc)


def test_a_name_mapped_to_another_address_in_etc_hosts_is_refused(tmp_path, receiving):
    needs_root()
    needs_tools("mount")
    env, collector = receiving
    out = run_with_own_hosts(tmp_path, HOSTS_BODY, env)
    for key in ("allowlisted_name", "local_name", "udp_local_name", "raw_name", "raw_local_name"):
        assert out[key].startswith(REFUSED), (key, out)
        assert "198.18.5.5" in out[key], (key, out)
    assert "unreachable" in out["good_literal"].lower(), out
    assert out["localhost"] == "ok:None" and out["raw_localhost"] == "ok:None", out
    events = collector.wait("egress_attempt", 5)
    names = sorted(e.detail["reason"].rpartition("(")[2].split()[0] for e in events)
    assert names == sorted(
        ["api.test", "evil.localhost", "evil.localhost", "api.test", "evil.localhost"]
    ), events
    assert {e.dst_ip for e in events} == {"198.18.5.5"}, events


# The deny-all fallbacks (the guard failed closed: deny_all(); sentinel_guard could not be
# imported: the inline hooks of sitecustomize.py and the .pth line) counted a *name* in connect()
# as local when it looked local ("localhost", "*.localhost", or anything starting with "127."),
# and C then connected wherever /etc/hosts or DNS sent it; "127.evil.example" was even looked up.
DENY_ALL_SETUP = {
    "deny_all": 'import sentinel_guard\nsentinel_guard.deny_all("test: could not start")\n',
    "sitecustomize_inline": "",  # PYTHONPATH is a copy with a broken sentinel_guard.py
    "pth_inline": (  # the .pth's import line, run as site.addpackage runs it (`fullname` set)
        'sys.modules["sentinel_guard"] = None  # import fails: the inline fallback\n'
        f"fullname = {str(PTH_FILE)!r}\n"
        "exec(next(line for line in open(fullname) if line.startswith('import ')))\n"
    ),
}
DENY_ALL_BODY = """
with open("/etc/hosts", "a") as f:
    f.write("198.18.5.5 evil.localhost 127.evil.example localhost\\n")
import socket, _socket
RESULTS["local_name"] = outcome(lambda: connect_with(_socket.socket, "evil.localhost", 8080))
RESULTS["dotted_name"] = outcome(lambda: connect_with(_socket.socket, "127.evil.example", 8080))
RESULTS["lookup_dotted"] = outcome(lambda: _socket.getaddrinfo("127.evil.example", 80))
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
RESULTS["loopback"] = outcome(lambda: connect_with(socket.socket, *srv.getsockname()))
RESULTS["lookup_localhost"] = outcome(lambda: socket.getaddrinfo("localhost", 80)[0][4][0])
"""


@pytest.mark.parametrize("case", sorted(DENY_ALL_SETUP))
def test_deny_all_fallbacks_count_no_name_in_connect_as_local(tmp_path, guarded, case):  # noqa: F811
    needs_root()
    needs_tools("mount")
    env = {**guarded, "SENTINEL_GUARD": "off"}
    if case == "sitecustomize_inline":
        broken = tmp_path / "broken"
        shutil.copytree(guard_path(), broken)
        (broken / "sentinel_guard.py").write_text("raise RuntimeError('corrupt install')\n")
        env = {**guarded, "PYTHONPATH": str(broken)}
    out = run_with_own_hosts(tmp_path, DENY_ALL_SETUP[case] + DENY_ALL_BODY, env)
    for key in ("local_name", "dotted_name", "lookup_dotted"):
        assert out[key].startswith("SecurityError:[Errno 13] sentinel guard (deny-all)"), (key, out)
    assert out["loopback"] == "ok:None" and out["lookup_localhost"].startswith("ok:"), out


# Attempts that found nothing to exploit: kept so that they stay that way. Each runs before the
# app's first socket (nothing of socket/_socket is loaded yet).
HELD = {
    # threads race to make the first socket (the getters are taken then): every one is checked
    "threads_race_first_socket": """
import threading
import _socket
out = []
def attempt(host):
    out.append((host, outcome(lambda: connect_with(_socket.socket, host, 8080))))
threads = [threading.Thread(target=attempt, args=("198.18.5.5" if i % 2 else "198.18.0.2",))
           for i in range(16)]
for t in threads: t.start()
for t in threads: t.join(10)
RESULTS["bad"] = sorted({o for h, o in out if h == "198.18.5.5"})[0]
RESULTS["bad_count"] = sum(1 for h, o in out if h == "198.18.5.5" and o.startswith("SecurityError"))
RESULTS["good"] = sorted({o for h, o in out if h == "198.18.0.2"})[0]
""",
    # the app points SENTINEL_GUARD_ALLOWLIST at its own permissive copy, rebinds marshal.loads,
    # open, os.stat and os.fstat to hand the guard that copy, then makes the guard reload
    # (mtime of the real file changed): the guard read its config and functions at start-up
    "allowlist_swap_on_reload": """
import os, marshal, builtins, time
real = os.environ["SENTINEL_STATE_DIR"] + "/guard/allowlist.marshal"
data = open(real, "rb").read()
magic, _, rest = data.partition(b"\\n")
doc = marshal.loads(rest.partition(b"\\n")[2])
doc["addrs"][bytes([198, 18, 5, 5])] = (("tcp", frozenset([8080])),)
evil = os.environ["SENTINEL_STATE_DIR"] + "/evil.marshal"
payload = marshal.dumps(doc)  # a well-formed file: its header's length and check match
header = b"%08x %08x\\n" % (len(payload), int.from_bytes(payload, "little") % (2**30 - 35))
open(evil, "wb").write(magic + b"\\n" + header + payload)
os.environ["SENTINEL_GUARD_ALLOWLIST"] = evil
real_loads, real_open = marshal.loads, builtins.open
marshal.loads = lambda raw: doc
builtins.open = lambda path, *a, **k: real_open(evil if path == real else path, *a, **k)
os.utime(real, ns=(time.time_ns(), time.time_ns() + 10**9))
time.sleep(1.2)  # two reload polls
marshal.loads, builtins.open = real_loads, real_open  # (importlib needs the real ones)
import socket
RESULTS["bad"] = outcome(lambda: connect_with(socket.socket, "198.18.5.5", 8080))
RESULTS["good"] = outcome(lambda: connect_with(socket.socket, "198.18.0.2", 8080))
""",
    # an instance `__class__` that claims another class, a metaclass `__mro__`/`__bases__` that
    # claim object only, and `__class__` reassigned between two C-socket subclasses
    "class_and_mro_lies": """
import _socket
class Meta(type):
    __mro__ = property(lambda cls: (cls, object))
    __bases__ = property(lambda cls: (object,))
class Unixy(_socket.socket, metaclass=Meta):
    __class__ = property(lambda self: int)
    family = property(lambda self: 1)
class Other(_socket.socket):
    pass
def swapped():
    s = Other()
    s.__class__ = Unixy
    s.settimeout(2)
    try:
        s.connect(("198.18.5.5", 8080))
    finally:
        s.close()
RESULTS["bad"] = outcome(lambda: connect_with(Unixy, "198.18.5.5", 8080))
RESULTS["bad_again"] = outcome(swapped)
RESULTS["good"] = outcome(lambda: connect_with(Unixy, "198.18.0.2", 8080))
""",
    # fork before any socket: the child's first socket is checked by the guard it inherited
    "fork_before_first_socket": """
import os
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    import _socket
    os.write(w, outcome(lambda: connect_with(_socket.socket, "198.18.5.5", 8080)).encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
RESULTS["bad"] = os.read(r, 4096).decode()
import _socket
RESULTS["good"] = outcome(lambda: connect_with(_socket.socket, "198.18.0.2", 8080))
""",
}


@pytest.mark.parametrize("case", sorted(HELD))
def test_attempts_that_found_nothing_stay_refused(tmp_path, guarded, case):  # noqa: F811
    needs_root()
    out = run_case(tmp_path, HELD[case], guarded)
    assert out["loaded_at_start"] == [], out
    for key in ("bad", "bad_again"):
        if key in out:
            assert out[key].startswith(REFUSED), (key, out)
    assert "198.18.5.5 port 8080/tcp is not allowlisted" in out["bad"], out
    assert "unreachable" in out["good"].lower(), out
    if "bad_count" in out:
        assert out["bad_count"] == 8, out


# A datagram socket is not always UDP: an ICMP "ping" socket (SOCK_DGRAM, IPPROTO_ICMP; Docker
# allows them to every user) was judged as UDP, so an echo (with any payload) to a host
# allowlisted for UDP passed the guard, and after one allowed UDP datagram to that address the
# fast path let ICMP through without a decision. The protocol is read with the C getter too.
ICMP_BODY = """
import socket
def send(proto, host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, proto)
    try:
        return s.sendto(b"\\x08\\x00\\x00\\x00\\x00\\x01\\x00\\x01", (host, port))
    finally:
        s.close()
RESULTS["icmp_first"] = outcome(lambda: send(socket.IPPROTO_ICMP, "198.18.9.9", 9100))
RESULTS["udp"] = outcome(lambda: send(0, "198.18.9.9", 9100))
RESULTS["udp_again"] = outcome(lambda: send(socket.IPPROTO_UDP, "198.18.9.9", 9100))
RESULTS["icmp_after_udp"] = outcome(lambda: send(socket.IPPROTO_ICMP, "198.18.9.9", 9100))
"""


def test_an_icmp_datagram_socket_is_not_udp(tmp_path, guarded):  # noqa: F811
    needs_root()
    needs_tools("mount", "sysctl")
    out = run_with_own_hosts(tmp_path, ICMP_BODY, guarded)
    for key in ("icmp_first", "icmp_after_udp"):
        assert out[key].startswith(REFUSED), (key, out)
        assert "198.18.9.9 port 9100/other" in out[key], (key, out)
    for key in ("udp", "udp_again"):
        assert "unreachable" in out[key].lower(), (key, out)
