"""Red-team cases for the lazy guard: what hostile app code can do before its first socket.

Each case runs in a fresh guarded interpreter inside a private, empty network namespace
(test_guard_lazy.run_case): an allowed non-loopback connect ends in ENETUNREACH, a refused one in
SecurityError. Where a case is about reporting, a live receiver checks that the attempt arrived.
"""

from __future__ import annotations

import pytest
from test_guard import Collector, needs_root
from test_guard_lazy import guarded, run_case  # noqa: F401 - guarded is a fixture

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
