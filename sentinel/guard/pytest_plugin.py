"""The guard in the app's unit tests: `pytest --sentinel-policy policies/mem0.yaml`.

Registered through the `pytest11` entry point and inactive unless `--sentinel-policy FILE` or
the `sentinel_policy` ini setting is given. Then it compiles the policy into the same allowlist
`sentinel apply` writes, without a daemon (IP literals and cidrs from the policy, `--sentinel-pin
NAME=IP` for names, the normal resolver for the other allowlisted names, once, before the guard
is installed), and boots the same guard (`pythonpath/sentinel_guard.py`) in enforce mode in the
test process: a call to anything not allowlisted raises SecurityError inside the test.
`@pytest.mark.sentinel_allow("example.org:443")` widens one test. The guard's reports arrive on
a private unix socket; the session ends with a summary of refused destinations and the tests
that tried them (also the calls a test caught and swallowed).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

MARKER = "sentinel_allow"
FLUSH_WAIT = 2.0  # bound on waiting for the guard's reporter to hand over its queue


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sentinel", "sentinel egress guard")
    group.addoption(
        "--sentinel-policy",
        default=None,
        help="install the sentinel guard compiled from this policy (off unless given)",
    )
    group.addoption(
        "--sentinel-pin",
        action="append",
        default=[],
        metavar="NAME=IP",
        help="a static pin for an allowlisted name (repeatable); other names use the resolver",
    )
    parser.addini("sentinel_policy", "policy file for the sentinel guard (relative to the ini)")
    parser.addini("sentinel_pins", "NAME=IP static pins, one per line", type="linelist")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(*destinations): allow HOST:PORT[/tcp|udp] for this test only"
    )
    path = config.getoption("sentinel_policy")
    if not path and config.getini("sentinel_policy"):
        base = config.inipath.parent if config.inipath else config.rootpath
        path = str(base / config.getini("sentinel_policy"))
    if not path:
        return
    pins = [*config.getini("sentinel_pins"), *config.getoption("sentinel_pin")]
    config.pluginmanager.register(GuardPlugin(Path(path), pins), "sentinel-guard")


def parse_pins(specs: list[str]) -> dict[str, list[str]]:
    pins: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, ip = spec.partition("=")
        try:
            address = str(ipaddress.ip_address(ip.strip()))
        except ValueError:
            raise pytest.UsageError(f"--sentinel-pin {spec!r}: expected NAME=IP") from None
        if not sep or not name.strip():
            raise pytest.UsageError(f"--sentinel-pin {spec!r}: expected NAME=IP")
        from sentinel.policy.safety import host_problem

        if why := host_problem(address):  # what no policy host, nor `apply --pin`, may be
            raise pytest.UsageError(f"--sentinel-pin {spec!r}: {why}")
        pins.setdefault(name.strip().rstrip(".").lower(), []).append(address)
    return pins


def parse_allow(spec: str) -> dict[str, Any]:
    """'example.org:443', '198.18.5.5:53/udp', '[2001:db8::5]:443' -> an allowlist entry."""
    from sentinel.errors import BadInput
    from sentinel.policy.explain import parse_dest

    try:
        dest = parse_dest(spec)
    except BadInput as exc:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: {exc.message}") from None
    return {
        "name": f"marker:{dest.text}",
        "host": dest.host,
        "cidr": None,
        "ports": [dest.port],
        "protocol": dest.protocol,
        "addresses": [dest.host] if dest.ip is not None else [],
    }


class GuardPlugin:
    def __init__(self, policy_path: Path, pin_specs: list[str]) -> None:
        from sentinel.errors import BadInput
        from sentinel.guard.compile import compile_allowlist
        from sentinel.policy.load import load_policy

        try:
            self.policy = load_policy(policy_path)
        except BadInput as exc:
            raise pytest.UsageError(f"--sentinel-policy: {exc.message}") from None
        self.pins = parse_pins(pin_specs)
        self.unresolved: list[str] = []
        resolved = self._resolve([n for n in self.policy.hostnames if n not in self.pins])
        self.base = compile_allowlist(self.policy, {**resolved, **self.pins})
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-pytest-"))
        self.allowlist = self.dir / "allowlist.marshal"
        self.socket_path = self.dir / "guard.sock"
        self.refused: list[dict[str, Any]] = []
        self.current = "<collection>"
        self.widened = False
        self._write(self.base)
        self.receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.receiver.bind(str(self.socket_path))
        self.receiver.setblocking(False)
        self.guard = self._boot()

    # --- set-up ---------------------------------------------------------------------------
    def _resolve(self, names: list[str]) -> dict[str, list[str]]:
        """Allowlisted names without a static pin: the normal resolver, before the guard."""
        out: dict[str, list[str]] = {}
        for name in names:
            try:
                infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            except OSError:
                self.unresolved.append(name)
                continue
            out[name] = sorted({info[4][0] for info in infos})
        return out

    def _write(self, doc: dict[str, Any]) -> None:
        from sentinel.guard.compile import encode_guard_allowlist

        tmp = self.allowlist.with_name(".allowlist.marshal.tmp")
        tmp.write_bytes(encode_guard_allowlist(doc))  # what the guard reads (format /4)
        os.replace(tmp, self.allowlist)  # a new inode: the guard sees the change at once

    def _boot(self) -> Any:
        from sentinel.guard import PYTHONPATH_DIR

        loaded = sys.modules.get("sentinel_guard")
        if loaded is not None and loaded.status().get("installed"):
            raise pytest.UsageError(
                "--sentinel-policy: a sentinel guard is already installed in this interpreter "
                "(sitecustomize or .pth); run pytest without it or with SENTINEL_GUARD=off"
            )
        env = {
            "SENTINEL_GUARD": "enforce",
            "SENTINEL_POLICY": str(Path(self.policy.source).resolve()),
            "SENTINEL_GUARD_ALLOWLIST": str(self.allowlist),
            "SENTINEL_GUARD_SOCKET": str(self.socket_path),
            "SENTINEL_GUARD_HEARTBEAT": "3600",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        sys.path.insert(0, str(PYTHONPATH_DIR))
        try:
            import sentinel_guard

            if sentinel_guard._BOOTED:  # loaded at start-up with SENTINEL_GUARD=off
                sentinel_guard._private_copy()["_install"]("enforce", "pytest")
            else:
                sentinel_guard.boot("pytest")
        finally:
            sys.path.remove(str(PYTHONPATH_DIR))
            for key, value in saved.items():  # the guard read its configuration at boot
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        status = sentinel_guard.status()
        if status.get("fail_closed"):
            raise pytest.UsageError(f"--sentinel-policy: guard failed: {status.get('fail_reason')}")
        return sentinel_guard

    # --- per test -------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self._collect()  # anything before this test belongs to the one before
        self.current = item.nodeid
        extra = [parse_allow(str(d)) for m in item.iter_markers(MARKER) for d in m.args]
        if extra:
            for entry in extra:
                if entry["host"] in self.pins:
                    entry["addresses"] = list(self.pins[entry["host"]])
            doc = {**self.base, "entries": [*self.base["entries"], *extra]}
            self._write(doc)  # now the guard lets the plugin resolve the marker's names
            self.widened = True
            todo = [e for e in extra if not e["addresses"]]
            for entry in todo:
                entry["addresses"] = self._resolve([entry["host"]]).get(entry["host"], [])
            if todo:
                self._write(doc)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
        outcome = yield
        if call.when == "teardown" and self.widened:
            self._narrow()
        self._collect()
        mine = [r for r in self.refused if r["test"] == item.nodeid and not r.get("shown")]
        if mine and call.when == "call":  # shown with the test's failure output
            for r in mine:
                r["shown"] = True
            lines = [f"{_dest(r)}: {r['reason']} ({r['frame']})" for r in mine]
            outcome.get_result().sections.append(
                ("sentinel guard: refused calls", "\n".join(lines))
            )

    def _narrow(self) -> None:
        """Back to the policy's allowlist, and wait until the guard has loaded it: a widened
        allowlist must not leak into the next test."""
        before = self.guard.status().get("generation")
        self._write(self.base)
        deadline = time.monotonic() + FLUSH_WAIT
        while self.guard.status().get("generation") == before and time.monotonic() < deadline:
            time.sleep(0.02)
        self.widened = False

    def _collect(self) -> None:
        """Take the guard's reports of refused calls (waits, bounded, for its queue)."""
        deadline = time.monotonic() + FLUSH_WAIT
        while time.monotonic() < deadline:
            c = self.guard.status().get("counters", {})
            if c.get("queued", 0) <= c.get("sent", 0) + c.get("dropped_total", 0):
                break
            time.sleep(0.01)
        while True:
            try:
                data = self.receiver.recv(65536)
            except BlockingIOError:
                return
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            if msg.get("type") == "egress_attempt":
                msg["test"] = self.current
                self.refused.append(msg)

    # --- end of session -------------------------------------------------------------------
    def pytest_report_header(self) -> list[str]:
        lines = [
            f"sentinel guard: {self.policy.source} ({len(self.policy.allow)} allow entries, "
            f"sha256 {self.policy.sha256[:12]}), enforce"
        ]
        if self.unresolved:
            lines.append(
                f"sentinel guard: names that did not resolve: {', '.join(self.unresolved)}"
            )
        return lines

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self._collect()
        tr = terminalreporter
        tr.section("sentinel guard")
        if not self.refused:
            tr.write_line("no network calls were refused")
            return
        by_dest: dict[str, list[dict[str, Any]]] = {}
        for r in self.refused:
            by_dest.setdefault(_dest(r), []).append(r)
        tr.write_line(
            f"{len(self.refused)} refused network call(s) to {len(by_dest)} destination(s):"
        )
        for dest, rows in sorted(by_dest.items()):
            tests = sorted({r["test"] for r in rows})
            tr.write_line(f"  {dest}: {len(rows)} call(s) from {', '.join(tests)}")

    def pytest_unconfigure(self) -> None:
        self.receiver.close()
        for path in (self.allowlist, self.socket_path):
            path.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass


def _dest(r: dict[str, Any]) -> str:
    host = r.get("ip") or r.get("host") or "?"
    host = f"[{host}]" if ":" in str(host) else host
    port = f":{r['port']}" if r.get("port") is not None else ""
    return f"{host}{port}/{r.get('protocol') or '?'}"
