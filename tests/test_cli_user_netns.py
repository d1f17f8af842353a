"""A demanding user's bad input and read-only expectations, through the real commands in a
namespace of the test's own: a clear message naming the option, exit 2, never a traceback;
evidence commands leave the state directory byte-identical."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON
from tests.conftest import start, tree_hash

pytestmark = pytest.mark.netns


def sentinel(topo, *args: str):
    return topo.sentinel(*args, env={"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]})


# times no clock can show: a huge duration ago, NaN, infinities, epochs past year 9999
OUT_OF_RANGE = [
    ("--last", "99999999999999999999d"),
    ("--since", "99999999999999999999d"),
    ("--since", "nan"),
    ("--since", "inf"),
    ("--since", "-inf"),
    ("--since", "-1e20"),
    ("--until", "1e20"),
    ("--until", "nan"),
]


def test_report_and_suggest_refuse_times_out_of_range_naming_the_option(topo):
    for command in (["report"], ["policy", "suggest"]):
        for option, value in OUT_OF_RANGE:
            args = [option, value] if option != "--until" else ["--since", "5m", option, value]
            out = sentinel(topo, *command, *args)
            where = f"{' '.join(command)} {' '.join(args)}: {out.stderr}"
            assert out.returncode == 2, where
            assert "Traceback" not in out.stderr and "Error:" not in out.stderr, where
            assert f"{option}: {value!r}" in out.stderr, where


def test_explain_leaves_the_state_directory_byte_identical(topo, tmp_path):
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    s = start(topo, tmp_path)
    s.wait_event("pin_changed", dst_name="postgres")
    assert s.stop() == 0
    assert not (state / "events.db-wal").exists()  # the writer closed cleanly
    before = tree_hash(state)
    for dest in ("postgres:5432", "api.openai.com:443", "198.18.5.5:443/udp"):
        out = sentinel(topo, "explain", dest)
        assert out.returncode in (0, 1), out.stderr
    assert "TTL" in sentinel(topo, "explain", "postgres:5432").stdout  # it read the store
    assert tree_hash(state) == before  # no -wal/-shm left behind


HUGE = "99999999999999999999d"
DURATIONS = {
    "monitor.tamper_interval": "monitor: {tamper_interval: %s}",
    "monitor.retention": "monitor: {retention: %s}",
    "dns.stale_grace": "dns: {stale_grace: %s}",
    "dns.max_ttl": "dns: {max_ttl: %s}",
    "alerts.dedup_window": "alerts: {dedup_window: %s}",
}


def test_a_huge_duration_is_refused_naming_the_field_and_nothing_is_applied(topo, tmp_path):
    base = "version: 1\nallow:\n  - {name: pg, host: 198.18.0.2, ports: [5432]}\n"
    for field, line in DURATIONS.items():
        path = tmp_path / f"{field}.yaml"
        path.write_text(base + line % HUGE + "\n")
        for args in (["check", str(path)], ["apply", "--policy", str(path)]):
            out = sentinel(topo, *args)
            assert out.returncode == 2, (args, out.stdout, out.stderr)
            assert f"{path}:4: {field}: " in out.stderr, (args, out.stderr)
            assert "Traceback" not in out.stderr
    # `run` used to apply, then die in its loop with an OverflowError (the deny half-started)
    out = topo.run(
        "app",
        str(Path(PYTHON).with_name("sentinel")),
        "run",
        "--policy",
        str(tmp_path / "monitor.tamper_interval.yaml"),
        env={"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]},
        check=False,
        timeout=60,
    )
    assert out.returncode == 2 and "monitor.tamper_interval" in out.stderr, out.stderr[-2000:]
    assert "sentinel" not in topo.run("app", "iptables-save").stdout.lower()
    assert "sentinel" not in topo.run("app", "ipset", "list", "-n").stdout.lower()


def test_capture_pcap_that_cannot_be_written_is_bad_input_without_a_traceback(topo, tmp_path):
    s = start(topo, tmp_path)
    try:
        s.wait_event("pin_changed", dst_name="postgres")
        for pcap, why in ((tmp_path, "is a directory"), (Path("/proc/nu.pcap"), "cannot write")):
            out = sentinel(topo, "capture", "--count", "1", "--pcap", str(pcap))
            assert out.returncode == 2, (pcap, out.stderr[-1500:])
            assert f"--pcap: {pcap}" in out.stderr and why in out.stderr, out.stderr[-1500:]
            assert "Traceback" not in out.stderr
    finally:
        assert s.stop() == 0


def test_a_bundle_directory_that_cannot_be_created_is_bad_input_like_results(topo, tmp_path):
    a_file = tmp_path / "report.txt"
    a_file.write_text("not a directory\n")
    for bundle in (a_file, Path("/proc/nu-bundle")):
        out = sentinel(topo, "report", "--last", "10m", "--bundle", str(bundle))
        # exit 1 means "violation found" to a CI gate; an unusable path is bad input (2)
        assert out.returncode == 2, (bundle, out.stderr)
        assert f"--bundle {bundle}" in out.stderr and "Traceback" not in out.stderr
    assert a_file.read_text() == "not a directory\n"


def test_explain_answers_for_what_libc_connects_to_not_a_dns_query(topo, tmp_path):
    """`0x7f000001`, `2130706433`, `127.1` are numbers to getaddrinfo (inet_aton), never a DNS
    query, and `localhost` comes from /etc/hosts: explain must not say "DNS refuses them"."""
    policy = Path(__file__).parents[1] / "policies" / "mem0.yaml"
    assert sentinel(topo, "apply", "--policy", str(policy)).returncode == 0
    for dest in ("0x7f000001:80", "2130706433:80", "127.1:80", "localhost:80"):
        out = sentinel(topo, "explain", dest)
        assert out.returncode == 0 and "ALLOW" in out.stdout, (dest, out.stdout, out.stderr)
        assert "REFUSED" not in out.stdout, (dest, out.stdout)
    out = sentinel(topo, "explain", "1.2.3:443")
    assert out.returncode == 1 and "decided by netfilter" in out.stdout, out.stdout
    assert "1.2.0.3" in out.stdout, out.stdout


UNSAFE_PINS = {  # the addresses a policy host may not be (safety.host_problem), as --pin values
    "169.254.169.254": "the cloud metadata service",
    "fe80::1": "link-local",
    "0.0.0.0": "the unspecified address",
    "::": "the unspecified address",
    "::ffff:198.18.0.2": "IPv4-mapped",
}


def test_a_pin_to_an_address_no_policy_host_may_be_is_refused_and_nothing_changes(topo):
    policy = str(Path(__file__).parents[1] / "policies" / "mem0.yaml")
    assert sentinel(topo, "apply", "--policy", policy).returncode == 0
    before = (topo.run("app", "iptables-save").stdout, topo.run("app", "ipset", "save").stdout)
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    applied = (state / "applied.json").read_bytes()
    for ip, why in UNSAFE_PINS.items():
        for args in (["apply", "--policy", policy], ["explain", "postgres:5432"]):
            out = sentinel(topo, *args, "--pin", f"postgres={ip}")
            assert out.returncode == 2, (args, ip, out.stdout[-500:], out.stderr)
            assert f"--pin postgres={ip}: " in out.stderr and why in out.stderr, out.stderr
    after = (topo.run("app", "iptables-save").stdout, topo.run("app", "ipset", "save").stdout)
    strip = lambda text: [x for x in text.splitlines() if not x.startswith("#")]  # noqa: E731
    assert [strip(t) for t in after] == [strip(t) for t in before]
    assert (state / "applied.json").read_bytes() == applied


def test_a_canary_the_policy_lets_out_is_refused_naming_the_field(topo, tmp_path):
    """A canary probe to an allowlisted address and port always 'escapes': a P1 page every
    round and a failing report, for a correct deny."""
    base = (
        "version: 1\nallow:\n  - {name: pg, host: 198.18.0.2, ports: [5432]}\n"
        "  - {name: pg6, host: '2001:db8::2', ports: [5432]}\n"
        "  - {name: lan, cidr: 198.18.4.0/24, ports: [443], protocol: udp}\n"
    )
    refused = {
        "{target: 198.18.0.2, port: 5432}": "canary.target",
        "{target: 198.18.4.7, port: 443}": "canary.target",  # udp probe inside the cidr
        "{target: 198.18.5.5, target6: '2001:db8::2', port: 5432}": "canary.target6",
    }
    for canary, field in refused.items():
        path = tmp_path / "canary.yaml"
        path.write_text(base + f"canary: {canary}\n")
        for args in (["check", str(path)], ["apply", "--policy", str(path)]):
            out = sentinel(topo, *args)
            assert out.returncode == 2, (canary, args, out.stdout, out.stderr)
            assert f"{path}:6: {field}: " in out.stderr, (canary, out.stderr)
        assert "sentinel" not in topo.run("app", "iptables-save").stdout.lower()
    # a target the allowlist covers only on other ports is a fine canary
    path.write_text(base + "canary: {target: 198.18.0.2, port: 443}\n")
    assert sentinel(topo, "check", str(path)).returncode == 0


def test_export_refuses_names_kubernetes_would_reject(topo):
    policy = str(Path(__file__).parents[1] / "policies" / "mem0.yaml")
    for option, value in (
        ("--namespace", "Bad_NS!"),
        ("--namespace", "a" * 64),
        ("--name", "Sentinel Egress"),
    ):
        for target in ("k8s", "cilium"):
            out = sentinel(topo, "export", target, "--policy", policy, option, value)
            assert out.returncode == 2, (option, value, out.stdout[-300:])
            assert f"{option}: {value!r}" in out.stderr and "RFC 1123" in out.stderr, out.stderr
    out = sentinel(topo, "export", "k8s", "--policy", policy, "--namespace", "prod-1")
    assert out.returncode == 0 and "namespace: prod-1" in out.stdout, out.stderr
