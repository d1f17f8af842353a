"""`sentinel lab` end to end (root; namespaces only) and its pure parts (no root)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import unavailable

from sentinel.lab import demo as lab
from sentinel.lab.demo import VIOLATIONS, Violation, lab_ok, percentile, violations_section

EXE = str(Path(sys.executable).with_name("sentinel"))
LAB_BUDGET = 60.0  # seconds: README's main command must be quick


def _netns_ready() -> None:
    reason = lab.preflight()
    if reason:
        unavailable(reason)


def _run_lab(
    out: Path, *args: str, timeout: float = 120
) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(
        [EXE, "lab", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - start


def _prefix(stdout: str) -> str:
    match = re.search(r"namespaces: (sn[0-9a-f]+)-\*", stdout)
    assert match, stdout
    return match.group(1)


def _assert_torn_down(prefix: str) -> None:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in names, names
    assert not Path(f"/etc/netns/{prefix}-app").exists()


# --- pure parts ---------------------------------------------------------------------------------
def test_percentile():
    assert percentile([], 0.95) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


def test_violation_matching_and_layers():
    by_name, ip6, curl = VIOLATIONS[0], VIOLATIONS[3], VIOLATIONS[5]
    assert by_name.expected_layer(guard_on=True) == "guard"
    assert by_name.expected_layer(guard_on=False) == "dns"
    assert curl.expected_layer(guard_on=True) == "netfilter"  # subprocess: guard cannot see it
    assert by_name.matches({"dst_name": "api.openai.com", "dst_ip": None})
    assert by_name.matches({"dst_name": "API.openai.com.", "dst_ip": None})  # as DNS spells it
    assert ip6.matches({"dst_ip": "2001:db8::5", "dst_port": 443, "protocol": "tcp"})
    assert not ip6.matches({"dst_ip": "2001:db8::5", "dst_port": 443, "protocol": "udp"})
    assert not Violation("x", "x", "tcp", 1).matches({"dst_ip": None, "dst_port": None})


def test_violations_section_and_verdict():
    outcomes = [
        {"action": v.action, "kind": "violation", "target": "t", "blocked": True, "error": "e"}
        for v in VIOLATIONS
    ]
    rep = {
        "attempts": [
            {
                "dst_ip": "198.18.5.5",
                "dst_port": 80,
                "protocol": "tcp",
                "dst_name": None,
                "layers": ["netfilter"],
            }
        ]
    }
    rows = violations_section(outcomes, rep, guard_on=False)
    assert [r["action"] for r in rows] == [v.action for v in VIOLATIONS]
    assert rows[-1]["layers_seen"] == ["netfilter"] and rows[0]["layers_seen"] == []
    results = {
        "sentinel": {"external_calls_last_10m": 0, "ground_truth": {"outside_host_packets": 0}},
        "violations": rows,
        "writes": {"success": True, "count": 4},
        "containers": {"healthy": True},
        "lab": {"control_reached_outside_before_sentinel": True},
    }
    assert lab_ok(results)
    results["lab"]["control_reached_outside_before_sentinel"] = False  # zero proves nothing
    assert not lab_ok(results)
    results["lab"]["control_reached_outside_before_sentinel"] = True
    results["sentinel"]["ground_truth"]["outside_host_packets"] = 1  # ground truth overrules
    assert not lab_ok(results)
    results["sentinel"]["ground_truth"]["outside_host_packets"] = 0
    rows[2]["blocked"] = False
    assert not lab_ok(results)
    outcomes.pop()  # a violation the workload never reported is not "blocked"
    assert not violations_section(outcomes, None, False)[-1]["blocked"]


# --- end to end -----------------------------------------------------------------------------------
@pytest.mark.netns
def test_lab_end_to_end(tmp_path):
    _netns_ready()
    done, elapsed = _run_lab(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert elapsed < LAB_BUDGET, elapsed
    _assert_torn_down(_prefix(done.stdout))
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("config", "writes", "db", "sentinel", "containers"):  # the PRD's format
        assert key in results
    s = results["sentinel"]
    assert s["external_calls_last_10m"] == 0
    assert s["ground_truth"]["outside_host_packets"] == 0
    # README: the lab's report covers the time sentinel watched, coverage complete
    assert s["coverage"] == "complete", s.get("coverage_detail")
    assert results["lab"]["control_reached_outside_before_sentinel"] is True
    assert results["containers"]["healthy"] is True
    w = results["writes"]
    assert w["count"] >= 4 and w["success"] and w["error_rate"] == 0
    assert {v["action"] for v in results["violations"]} == {v.action for v in VIOLATIONS}
    active = set(results["layers_active"])
    for v in results["violations"]:
        assert v["blocked"], v
        # recorded at the expected layer wherever that layer is reporting in this build
        if v["expected_layer"] in active:
            assert v["expected_layer"] in v["layers_seen"], v
    if s.get("blocked_attempts_last_10m"):  # events flow: on-call must have been told
        assert results["alerts"]["received"] >= 1, results["alerts"]
    evidence = tmp_path / "evidence"
    for name in (
        "policy.yaml",
        "workload.jsonl",
        "sentinel.log",
        "iptables-save-v4.txt",
        "iptables-save-v6.txt",
        "ipset-save.txt",
        "outside-host-counters.txt",
        "status.json",
    ):
        assert (evidence / name).exists(), name
    assert "SENTINEL-OUT" in (evidence / "iptables-save-v4.txt").read_text()
    # `sentinel capture` ran beside the workload: every netfilter attempt once, same event ids
    capture = results["lab"]["capture"]
    assert capture["status"] == "ok" and capture["dropped"] == 0, capture
    lines = [json.loads(x) for x in (evidence / "capture.jsonl").read_text().splitlines()]
    shown = [x["event_id"] for x in lines if x["type"] == "packet" and x["layer"] == "netfilter"]
    with sqlite3.connect(tmp_path / "state" / "events.db") as conn:
        stored = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM events WHERE layer = 'netfilter' AND kind = 'egress_attempt'"
            )
        ]
    assert stored and sorted(set(shown)) == sorted(stored), (shown, stored)
    assert capture["packets"] == len(lines) - 1 and (evidence / "capture.pcap").stat().st_size > 24


@pytest.mark.netns
def test_lab_app_command(tmp_path):
    _netns_ready()
    script = tmp_path / "app.py"
    record = tmp_path / "app-result.json"
    script.write_text(
        "import json, socket, sys\n"
        "out = {}\n"
        "for name, host, port in (('allowed', 'postgres', 5432), ('outside', '198.18.5.5', 443)):\n"
        "    try:\n"
        "        with socket.create_connection((host, port), timeout=3) as s:\n"
        "            out[name] = s.recv(32).decode().strip()\n"
        "    except OSError as exc:\n"
        "        out[name] = 'blocked: ' + type(exc).__name__\n"
        f"open({str(record)!r}, 'w').write(json.dumps(out))\n"
    )
    done, _ = _run_lab(tmp_path / "out", "--app", f"{sys.executable} {script}")
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(record.read_text())
    assert seen["allowed"] == "ok postgres"
    assert seen["outside"].startswith("blocked"), seen
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["lab"]["app"]["exit_code"] == 0
    assert results["sentinel"]["external_calls_last_10m"] == 0
    assert results["sentinel"]["ground_truth"]["outside_host_packets"] == 0
    assert results["violations"] == []  # no scripted workload with --app


def _interrupted_lab(tmp_path: Path, ready: tuple[str, ...], interrupt) -> tuple[int, str]:
    """Runs the lab with a sleeping app in a process group of its own (as a shell job), calls
    `interrupt(proc)` once a line holding one of `ready` is printed; returns (exit, output)."""
    proc = subprocess.Popen(
        [EXE, "lab", "--out", str(tmp_path), "--app", "sleep 60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded: the lab prints a handful of lines, then sleeps
            lines.append(line)
            if any(word in line for word in ready):
                break
        interrupt(proc)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode, "".join(lines) + rest


@pytest.mark.netns
def test_lab_ctrl_c_tears_everything_down(tmp_path):
    _netns_ready()
    code, output = _interrupted_lab(
        tmp_path, ("starting sentinel",), lambda proc: proc.send_signal(signal.SIGINT)
    )
    assert code == 130, output
    assert "interrupted" in output and "tearing down" in output
    _assert_torn_down(_prefix(output))


def _double_ctrl_c(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)


@pytest.mark.netns
def test_a_double_ctrl_c_at_the_terminal_still_tears_everything_down(tmp_path):
    """A terminal's Ctrl-C goes to the whole foreground process group (the lab and the daemon
    it started); a second one 50 ms later lands while the lab tears down, which takes longer
    (the daemon's orderly stop, six namespaces deleted). Teardown must finish anyway."""
    _netns_ready()
    ready = ("running --app", "starting sentinel capture")
    code, output = _interrupted_lab(tmp_path, ready, _double_ctrl_c)
    assert code == 130, output
    assert "Traceback" not in output, output
    done = re.search(r"tearing down namespaces and processes \((\d+\.\d) s\)", output)
    assert done, output  # the teardown step ran to its end
    assert float(done.group(1)) >= 0.1, output  # so the second signal landed inside it
    _assert_torn_down(_prefix(output))


@pytest.mark.netns
def test_lab_refuses_a_foreign_output_directory(tmp_path):
    _netns_ready()
    (tmp_path / "precious.txt").write_text("keep me")
    done, _ = _run_lab(tmp_path)
    assert done.returncode == 1 and "not a lab output directory" in done.stdout
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "evidence").exists()


@pytest.mark.netns
def test_lab_refuses_an_output_path_that_is_a_file(tmp_path):
    _netns_ready()
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    done, _ = _run_lab(a_file)
    said = " ".join(done.stdout.split())  # rich wraps the message at the terminal's width
    assert done.returncode == 1 and "is not a directory: pick --out" in said, said + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert a_file.read_text() == "keep me"


@pytest.mark.netns
def test_lab_failure_still_tears_down(tmp_path):
    """sentinel refuses a policy whose own tests fail: the lab fails, and cleans up."""
    _netns_ready()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        lab.LAB_POLICY.replace(
            '{to: "postgres:5432", expect: allow}', '{to: "postgres:5432", expect: deny}'
        )
    )
    done, _ = _run_lab(tmp_path / "out", "--policy", str(policy))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "lab failed" in done.stdout
    _assert_torn_down(_prefix(done.stdout))


def test_lab_rejects_a_broken_policy_before_building(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nallow: [{name: x, host: postgres, ports: [70000]}]\n")
    done = subprocess.run(
        [EXE, "lab", "--out", str(tmp_path / "out"), "--policy", str(policy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if lab.preflight():
        assert done.returncode == 2  # not root: refused before anything else
        return
    assert done.returncode == 2 and "70000" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.netns
def test_lab_catches_a_leak_in_audit_mode(tmp_path):
    """Negative control: with mode audit the calls get out, and the lab must say so."""
    _netns_ready()
    policy = tmp_path / "policy.yaml"
    policy.write_text(lab.LAB_POLICY.replace("mode: enforce", "mode: audit"))
    done, _ = _run_lab(tmp_path / "out", "--policy", str(policy))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["sentinel"]["ground_truth"]["outside_host_packets"] > 0
    leaked = {v["action"] for v in results["violations"] if not v["blocked"]}
    assert {"ip_literal", "ipv6", "curl_subprocess"} <= leaked, results["violations"]
    _assert_torn_down(_prefix(done.stdout))


def test_workload_tells_blocked_from_reached():
    import errno
    import socket
    import ssl
    import urllib.error

    from sentinel.lab.tools.workload import stopped_before_the_host as stopped

    assert stopped(socket.gaierror(-2, "Name or service not known"))
    assert stopped(PermissionError(13, "sentinel guard: not allowlisted"))  # SecurityError
    assert stopped(ConnectionRefusedError(111, "refused"))  # REJECT: RST or ICMP
    assert stopped(TimeoutError("timed out"))
    assert stopped(OSError(errno.EHOSTUNREACH, "no route"))
    assert stopped(urllib.error.URLError(ConnectionRefusedError(111, "refused")))
    # the connection was made: whatever went wrong afterwards, the packets got there
    assert not stopped(ssl.SSLError(1, "wrong version number"))
    assert not stopped(urllib.error.URLError(ssl.SSLError(1, "wrong version number")))
    assert not stopped(ConnectionResetError(104, "reset by peer"))
