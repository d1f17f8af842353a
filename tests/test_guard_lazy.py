"""The guard loads no socket module at start-up: it takes what it needs from `_socket` when the
app first uses a socket, and only from C objects. Every way an app can reach a socket before
that moment, or rebind what the guard would take, is still refused.

Each case runs in a fresh guarded interpreter inside a private, empty network namespace (see
test_guard.py): an allowed non-loopback connect ends in ENETUNREACH, a refused one in
SecurityError.
"""

from __future__ import annotations

import ast
import builtins
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from test_guard import PINS, guard_env, needs_root, results, write_policy

from sentinel.guard import RUNTIME_FILE
from sentinel.guard.compile import write_allowlist
from sentinel.policy.load import load_policy

# No `import socket` here: the first lines of each case run before any socket module is loaded.
PRELUDE = """\
import sys
RESULTS = {"loaded_at_start": sorted(m for m in ("_socket", "socket", "_json", "json")
                                     if m in sys.modules)}
import json

def outcome(fn):
    try:
        return "ok:" + str(fn())[:60]
    except BaseException as exc:
        return "%s:%s" % (type(exc).__name__, str(exc)[:120])

def connect_with(cls, host, port):
    s = cls()
    s.settimeout(2)
    try:
        s.connect((host, port))
    finally:
        s.close()
"""

CASES = {
    # the app rebinds _socket's address functions before its first socket: the guard must not
    # take them (they are not C functions); it reads IPv4 itself and treats other literals as
    # names (refused unless allowlisted)
    "rebound_inet_pton": """
import _socket
_socket.inet_pton = lambda family, host: bytes([198, 18, 0, 2]) if family == 2 else bytes(16)
_socket.inet_ntop = lambda family, packed: "198.18.0.2"
import socket
RESULTS["bad"] = outcome(lambda: connect_with(socket.socket, "198.18.5.5", 8080))
RESULTS["good"] = outcome(lambda: connect_with(socket.socket, "198.18.0.2", 8080))
RESULTS["v6"] = outcome(lambda: connect_with(
    lambda: socket.socket(socket.AF_INET6), "2001:db8::2", 8080))
""",
    # a fake module in sys.modules with the real socket type but lying functions
    "fake_module": """
import types, _socket as real
fake = types.ModuleType("_socket")
fake.__dict__.update(real.__dict__)
fake.inet_pton = lambda family, host: bytes([198, 18, 0, 2])
sys.modules["_socket"] = fake
RESULTS["bad"] = outcome(lambda: connect_with(real.socket, "198.18.5.5", 8080))
RESULTS["good"] = outcome(lambda: connect_with(real.socket, "198.18.0.2", 8080))
""",
    # _socket through importlib, used directly (no socket.py), first by a subclass whose
    # family claims AF_UNIX and whose metaclass claims another base: the guard reads the C
    # type's own getters from the real base chain
    "importlib_and_liars": """
import importlib
_socket = importlib.import_module("_socket")
class Meta(type):
    @property
    def __base__(cls):
        return object
class Liar(_socket.socket, metaclass=Meta):
    family = property(lambda self: 1)
    type = property(lambda self: 1)
RESULTS["bad"] = outcome(lambda: connect_with(Liar, "198.18.5.5", 8080))
RESULTS["bad_again"] = outcome(lambda: connect_with(_socket.socket, "198.18.5.5", 8080))
RESULTS["good"] = outcome(lambda: connect_with(_socket.socket, "198.18.0.2", 8080))
RESULTS["name"] = outcome(lambda: _socket.getaddrinfo("evil.example", 443))
""",
    # a C extension imports _socket itself (_ssl, through the socket C API capsule); the app
    # then uses the module that extension loaded
    "c_extension": """
import _ssl
_socket = sys.modules["_socket"]
RESULTS["bad"] = outcome(lambda: connect_with(_socket.socket, "198.18.5.5", 8080))
RESULTS["good"] = outcome(lambda: connect_with(_socket.socket, "198.18.0.2", 8080))
""",
    # socket.py imported and its class swapped for a subclass with a lying `family` before
    # the first socket: the name precheck is patched onto the class, the C methods taken from
    # the C type
    "swapped_class": """
import socket
class Sneaky(socket.socket):
    @property
    def family(self):
        return socket.AF_UNIX
socket.socket = Sneaky
RESULTS["bad"] = outcome(lambda: connect_with(socket.socket, "198.18.5.5", 8080))
RESULTS["name"] = outcome(lambda: connect_with(socket.socket, "evil.example", 8080))
RESULTS["good"] = outcome(lambda: connect_with(socket.socket, "198.18.0.2", 8080))
""",
}


def run_case(tmp_path: Path, body: str, env: dict[str, str]) -> dict:
    script = tmp_path / "case.py"
    script.write_text(PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(RESULTS))\n")
    cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    proc = subprocess.run(
        [*cmd, sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30
    )
    return results(proc)


@pytest.fixture
def guarded(tmp_path, state_dir):
    policy = write_policy(tmp_path)
    write_allowlist(load_policy(policy), PINS, state_dir)
    return guard_env(state_dir, policy)


def test_nothing_socket_or_json_is_loaded_before_the_app_asks(tmp_path, guarded):
    needs_root()
    out = run_case(tmp_path, 'RESULTS["status"] = __import__("sentinel_guard").status()', guarded)
    assert out["loaded_at_start"] == [], out
    assert out["status"]["installed"] and out["status"]["entries"] == 3, out


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_way_to_a_socket_before_the_guard_saw_one_is_still_guarded(tmp_path, guarded, case):
    needs_root()
    out = run_case(tmp_path, CASES[case], guarded)
    assert out["loaded_at_start"] == [], out
    for key in ("bad", "bad_again", "name"):
        if key in out:
            assert out[key].startswith("SecurityError:[Errno 13] sentinel guard:"), (key, out)
    assert "198.18.5.5 port 8080/tcp is not allowlisted" in out["bad"], out
    assert "unreachable" in out["good"].lower(), out  # allowed: the guard let it through
    if "v6" in out:  # without C inet_pton an IPv6 literal is a name: refused, never allowed
        assert out["v6"].startswith("SecurityError:"), out


def test_the_builtins_snapshot_holds_every_builtin_the_guard_uses():
    """The private copy sees only the builtins listed in _BUILTINS (a snapshot, so the app cannot
    rebind them); a name missing there would be a NameError on some rarely taken path."""
    text = RUNTIME_FILE.read_text()
    names, todo = set(), [compile(text, str(RUNTIME_FILE), "exec")]
    while todo:
        co = todo.pop()
        names.update(co.co_names)
        todo.extend(c for c in co.co_consts if isinstance(c, types.CodeType))
    used = {n for n in names if n in vars(builtins) and n not in ("__name__", "__doc__")}
    start = text.index("_BUILTINS = (") + len("_BUILTINS = ")
    listed = set(ast.literal_eval(text[start : text.index(")", start) + 1]))
    assert used | {"__build_class__"} <= listed, sorted(used - listed)


def test_the_deny_all_fallback_takes_the_socket_getters_from_c_too(tmp_path, guarded):
    """deny_all() (what boot() installs when the guard cannot start) runs in the public module
    with the same lazily taken getters: a subclass claiming AF_UNIX is still refused, loopback
    and a unix socket are not."""
    needs_root()
    body = """
import sentinel_guard
sentinel_guard.deny_all("test: the guard could not start")
import socket
class Sneaky(socket.socket):
    family = property(lambda self: socket.AF_UNIX)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
RESULTS["loopback"] = outcome(lambda: connect_with(socket.socket, *srv.getsockname()))
RESULTS["bad"] = outcome(lambda: connect_with(Sneaky, "198.18.0.2", 8080))
RESULTS["name"] = outcome(lambda: socket.getaddrinfo("api.test", 8080))
unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
RESULTS["unix"] = outcome(lambda: unix.connect("/nonexistent/sock"))
"""
    out = run_case(tmp_path, body, {**guarded, "SENTINEL_GUARD": "off"})
    assert out["loaded_at_start"] == [] and out["loopback"] == "ok:None", out
    for key in ("bad", "name"):
        assert out[key].startswith("SecurityError:[Errno 13] sentinel guard (deny-all)"), out
    assert out["unix"].startswith("FileNotFoundError"), out  # local: not the guard's business
