"""The pytest plugin (`--sentinel-policy`): a sample project's test suite run by a real pytest.

Each run happens in a private network namespace that has only a loopback device carrying two
documentation addresses (198.18.7.7 "the allowed upstream", 198.18.5.5 "telemetry"), so even a
call the guard failed to stop could not leave it. The sample tests listen on those addresses
themselves; with the plugin off the telemetry call connects, with it on it raises SecurityError.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.netns

POLICY = """\
version: 1
mode: enforce
allow:
  - {name: api, host: api.internal, ports: [8080], protocol: tcp}
tests:
  - {to: "api.internal:8080", expect: allow}
"""

CONFTEST = """\
import socket

import pytest


@pytest.fixture
def serve():
    servers = []

    def listen(address, port):
        srv = socket.create_server((address, port))
        servers.append(srv)
        return srv

    yield listen
    for srv in servers:
        srv.close()


def call(host, port):
    with socket.create_connection((host, port), timeout=3):
        return True
"""

SAMPLE = """\
import sys

import pytest
from conftest import call


def test_allowed_call_by_name(serve):
    serve("198.18.7.7", 8080)
    assert call("api.internal", 8080)


def test_telemetry_home_call(serve):
    serve("198.18.5.5", 443)
    call("198.18.5.5", 443)


def test_telemetry_swallowed(serve):
    serve("198.18.5.5", 443)
    try:
        call("198.18.5.5", 443)
    except OSError:
        pass  # what telemetry libraries do: the summary still names this test


@pytest.mark.sentinel_allow("198.18.5.5:443")
def test_marker_widens_one_test(serve):
    serve("198.18.5.5", 443)
    assert call("198.18.5.5", 443)


@pytest.mark.sentinel_allow("metrics.internal:9090")
def test_marker_with_a_pinned_name(serve):
    serve("198.18.5.5", 9090)
    assert call("metrics.internal", 9090)


def test_after_the_marker_the_policy_is_back(serve):
    serve("198.18.5.5", 443)
    with pytest.raises(PermissionError) as info:
        call("198.18.5.5", 443)
    assert type(info.value).__name__ == "SecurityError"


def test_guard_module_presence():
    print("GUARD_LOADED", "sentinel_guard" in sys.modules)
"""


@pytest.fixture
def netns():
    if sys.platform != "linux" or shutil.which("ip") is None:
        unavailable("needs Linux and iproute2")
    import os

    if os.geteuid() != 0:
        unavailable("needs root (network namespace)")
    name = f"snpt{secrets.token_hex(3)}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["addr", "add", "198.18.7.7/32", "dev", "lo"],
            ["addr", "add", "198.18.5.5/32", "dev", "lo"],
        ):
            subprocess.run(["ip", "-n", name, *cmd], check=True, timeout=30)
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(
            "127.0.0.1 localhost\n198.18.7.7 api.internal\n198.18.5.5 metrics.internal\n"
        )
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        yield name
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_app=SAMPLE)
    (pytester.path / "policy.yaml").write_text(POLICY)
    return pytester


def run_in(netns: str, pytester, *args: str):  # noqa: ANN001, ANN201
    return pytester.run(
        "ip", "netns", "exec", netns, sys.executable, "-m", "pytest",
        "-p", "no:cacheprovider", "-s", *args, timeout=120,
    )  # fmt: skip


PINS = (
    "--sentinel-pin",
    "api.internal=198.18.7.7",
    "--sentinel-pin",
    "metrics.internal=198.18.5.5",
)


def test_plugin_off_changes_nothing(netns, project):
    result = run_in(netns, project)
    assert result.ret == 1  # only the test that expects a SecurityError fails
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 6 and outcomes["failed"] == 1, result.stdout.str()
    text = result.stdout.str()
    assert "GUARD_LOADED False" in text
    assert "test_after_the_marker_the_policy_is_back" in text  # failed: no SecurityError
    assert "sentinel guard" not in text and "SecurityError" not in text.split("short test")[0]


def test_telemetry_call_fails_with_security_error_and_the_summary_names_it(netns, project):
    result = run_in(netns, project, "--sentinel-policy", "policy.yaml", *PINS)
    text = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes == {"passed": 6, "failed": 1}, text
    assert "GUARD_LOADED True" in text
    failed = [x for x in result.outlines if x.startswith("FAILED")]
    assert len(failed) == 1, text
    assert "test_app.py::test_telemetry_home_call - sentinel_guard.SecurityError" in failed[0]
    assert "SecurityError: [Errno 13] sentinel guard: connection to 198.18.5.5 port 443/tcp" in text
    assert "sentinel guard: policy.yaml (1 allow entries" in text  # the header
    summary = text[text.index("= sentinel guard =") :]
    line = next(x for x in summary.splitlines() if x.strip().startswith("198.18.5.5:443/tcp"))
    assert "3 call(s)" in line
    for test in (
        "test_telemetry_home_call",
        "test_telemetry_swallowed",
        "test_after_the_marker_the_policy_is_back",
    ):
        assert f"test_app.py::{test}" in line
    assert "test_marker_widens_one_test" not in summary
    assert "test_allowed_call_by_name" not in summary
    # the failing test's report carries the refused call with the frame that made it
    assert "sentinel guard: refused calls" in text and "conftest.py:" in text


def test_ini_setting_activates_it_and_bad_input_is_a_usage_error(netns, project):
    project.makeini(
        "[pytest]\nsentinel_policy = policy.yaml\n"
        "sentinel_pins =\n    api.internal=198.18.7.7\n    metrics.internal=198.18.5.5\n"
    )
    result = run_in(netns, project, "-k", "telemetry_home or by_name")
    assert result.parseoutcomes() == {"passed": 1, "failed": 1, "deselected": 5}
    assert "SecurityError" in result.stdout.str()
    bad = run_in(netns, project, "--sentinel-pin", "api.internal=not-an-ip")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--sentinel-pin 'api.internal=not-an-ip': expected NAME=IP" in bad.stderr.str()
    metadata = run_in(netns, project, "--sentinel-pin", "api.internal=169.254.169.254")
    assert metadata.ret == pytest.ExitCode.USAGE_ERROR
    assert "api.internal=169.254.169.254': the cloud metadata service" in metadata.stderr.str()
    (project.path / "broken.yaml").write_text("version: 1\nallow:\n  - {name: x, ports: [1]}\n")
    broken = run_in(netns, project, "--sentinel-policy", "broken.yaml")
    assert broken.ret == pytest.ExitCode.USAGE_ERROR
    assert "broken.yaml:3: allow[0]: needs exactly one of host or cidr" in broken.stderr.str()


def test_a_guard_already_installed_is_a_usage_error_and_off_lets_the_plugin_in(
    netns, project, monkeypatch
):
    from sentinel.guard import guard_path

    monkeypatch.setenv("PYTHONPATH", str(guard_path()))  # sitecustomize boots the guard
    monkeypatch.setenv("SENTINEL_POLICY", str(project.path / "policy.yaml"))
    monkeypatch.setenv("SENTINEL_STATE_DIR", str(project.path / "no-state"))
    monkeypatch.setenv("SENTINEL_GUARD", "enforce")
    twice = run_in(netns, project, "--sentinel-policy", "policy.yaml", *PINS)
    assert twice.ret == pytest.ExitCode.USAGE_ERROR
    assert "a sentinel guard is already installed in this interpreter" in twice.stderr.str()
    monkeypatch.setenv("SENTINEL_GUARD", "off")  # loaded but off: the plugin installs its own
    off = run_in(netns, project, "--sentinel-policy", "policy.yaml", *PINS, "-k", "home_call")
    assert off.parseoutcomes() == {"failed": 1, "deselected": 6}
    assert "SecurityError" in off.stdout.str()
