"""policy suggest / --diff / explain without root: events as the layers record them."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from sentinel.enforce.render import render_rules
from sentinel.errors import BadInput
from sentinel.evidence.report import Window
from sentinel.policy.decide import Packet, placeholder_pins, run_policy_tests, trace
from sentinel.policy.diff import compare
from sentinel.policy.explain import explain, parse_dest
from sentinel.policy.load import parse_policy
from sentinel.policy.observed import Observations
from sentinel.policy.suggest import suggest
from sentinel.store.events import Event

NOW = time.time()


def dns(name: str, addresses=(), cnames=(), ts: float = 0.0, verdict: str = "audited") -> Event:
    answer = {"rcode": "NOERROR", "addresses": list(addresses), "cnames": list(cnames)}
    return Event(
        layer="dns", kind="egress_attempt", verdict=verdict, protocol="dns", dst_name=name,
        dst_port=53, detail={"answer": answer} if verdict == "audited" else {}, ts=NOW - 100 + ts,
    )  # fmt: skip


def net(ip: str, port: int, proto: str = "tcp", ts: float = 0.0, verdict="audited") -> Event:
    family = ipaddress.ip_address(ip).version
    return Event(
        layer="netfilter", kind="egress_attempt", verdict=verdict, protocol=proto, dst_ip=ip,
        dst_port=port, family=family, ts=NOW - 100 + ts,
    )  # fmt: skip


def observe(events: list[Event], **kw) -> Observations:
    return Observations(Window(NOW - 600, NOW), events, "test", **kw)


def checked(text: str):
    policy = parse_policy(text, "suggested.yaml")
    results = run_policy_tests(policy, placeholder_pins(policy))
    assert results and all(r.passed for r in results), [(r.test.to, r.got) for r in results]
    return policy


def test_names_from_dns_answers_cnames_collapse_and_protocols_split():
    events = [
        dns("api.example.com", ["198.18.5.5"], ["edge.cdn.test"], ts=0),
        dns("edge.cdn.test", ["198.18.5.5"], ts=0.5),  # the app asked the target itself too
        net("198.18.5.5", 443, ts=1),
        net("198.18.5.5", 443, "udp", ts=2),
        net("198.18.5.5", 8443, ts=3),
    ]
    policy = checked(suggest(observe(events)).text())
    entries = [(a.name, a.host, a.ports, a.protocol) for a in policy.allow]
    assert entries == [
        ("api-example-com", "api.example.com", (443, 8443), "tcp"),
        ("api-example-com-udp", "api.example.com", (443,), "udp"),
    ]


def test_addresses_without_a_name_are_single_address_entries_and_never_loopback():
    events = [
        net("198.18.6.6", 8443),
        net("2001:db8::7", 443),
        net("127.0.0.1", 5000),
        net("169.254.169.254", 80),
        net("198.18.0.99", 443),  # the canary target (configured in the policy in force)
    ]
    in_force = parse_policy("version: 1\ncanary: {target: 198.18.0.99}\n")
    text = suggest(observe(events, in_force=in_force)).text()
    policy = checked(text)
    assert [str(a.cidr) for a in policy.allow] == ["198.18.6.6/32", "2001:db8::7/128"]
    assert "# not suggested: 127.0.0.1: loopback is never an entry" in text
    assert "# not suggested: 169.254.169.254: link-local or multicast" in text
    assert "# not suggested: 198.18.0.99: the sentinel's own canary" in text
    assert (policy.tests[-1].to, policy.tests[-1].expect) == ("198.18.0.99:443", "deny")


def test_enforce_mode_attempts_guard_ports_and_names_seen_only_in_dns():
    guard = Event(
        layer="guard", kind="egress_attempt", verdict="blocked", protocol="dns",
        dst_name="telemetry.example.org", dst_port=443, ts=NOW - 50,
    )  # fmt: skip
    events = [dns("only-looked-up.example", verdict="blocked"), guard]
    text = suggest(observe(events)).text()
    policy = checked(text)
    assert [(a.host, a.ports) for a in policy.allow] == [("telemetry.example.org", (443,))]
    assert "protocol tcp assumed" in text
    assert "# not suggested: only-looked-up.example:" in text and "no port seen" in text


def test_canary_and_sentinel_events_are_never_attempts():
    events = [
        Event(
            layer="canary",
            kind="canary_probe",
            verdict="audited",
            protocol="tcp",
            dst_ip="198.18.0.99",
            dst_port=443,
            ts=NOW - 10,
        ),  # fmt: skip
        Event(layer="sentinel", kind="kernel_counters", verdict="info", ts=NOW - 10),
    ]
    text = suggest(observe(events)).text()
    assert "allow: []" in text and "198.18.0.99" not in text.split("tests:")[0]
    checked(text)


IN_FORCE = """\
version: 1
mode: audit
allow:
  - {name: postgres, host: postgres, ports: [5432], protocol: tcp}
  - {name: neo4j, host: neo4j, ports: [7687], protocol: tcp}
  - {name: everything, cidr: 0.0.0.0/0, ports: [443], protocol: tcp}
"""


def test_counted_upstreams_are_carried_over_and_new_ports_widen_them():
    in_force = parse_policy(IN_FORCE, "in-force.yaml")
    applied = {"pins": {"postgres": ["198.18.0.2"], "neo4j": ["198.18.0.3"]}}
    counted = {"198.18.0.2,tcp:5432": 12, "0.0.0.0/0,tcp:443": 3}
    # postgres on another port: its address is known from the pins in force (the resolver
    # answers allowlisted names from pins and records no attempt for them)
    events = [net("198.18.0.2", 5433, verdict="blocked")]
    obs = observe(events, applied=applied, in_force=in_force, allowed_packets=counted)
    obs.counters_known = True
    text = suggest(obs).text()
    policy = checked(text)
    assert [(a.name, a.host, a.ports) for a in policy.allow] == [
        ("postgres", "postgres", (5432, 5433))
    ]
    assert "postgres: in force and used, 12 packet(s)" in text
    assert "everything: in force as 0.0.0.0/0, never suggested" in text

    diff = compare(suggest(obs), in_force)
    assert [(r["entry"].allow.name, r["ports"]) for r in diff["added"]] == [("postgres", [5433])]
    assert [r["allow"].name for r in diff["unused"]] == ["neo4j"]
    assert [r["allow"].name for r in diff["used"]] == ["postgres", "everything"]
    assert diff["unused"][0]["line"] == 0  # in-memory policy: no file to point at


def test_entry_names_are_valid_and_unique():
    long = "a" * 40 + ".example.com"
    events = [
        dns(long, ["198.18.5.1"]), net("198.18.5.1", 443, ts=1),
        dns(long.replace("a", "a", 1) + ".", ["198.18.5.2"], ts=2),
        dns("b" * 40 + ".example.com", ["198.18.5.3"], ts=3), net("198.18.5.3", 443, ts=4),
    ]  # fmt: skip
    policy = checked(suggest(observe(events)).text())
    names = [a.name for a in policy.allow]
    assert len(names) == len(set(names)) == 2 and all(len(n) <= 32 for n in names)


EXPLAIN = """\
version: 1
mode: enforce
allow:
  - {name: postgres, host: postgres, ports: [5432], protocol: tcp}
  - {name: lan, cidr: 198.18.9.0/24, ports: [443], protocol: udp}
"""


@pytest.fixture
def policy_file(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(EXPLAIN)
    return parse_policy(path.read_text(), str(path))


def test_explain_uses_the_pins_the_entry_line_and_the_set(policy_file):
    applied = {"pins": {"postgres": ["198.18.0.2"]}, "policy_sha256": policy_file.sha256}
    got = explain(policy_file, parse_dest("postgres:5432"), applied)
    assert (got["verdict"], got["decided_by"]) == ("allow", "netfilter")
    assert got["entries"][0]["where"].endswith("p.yaml:4")
    assert got["layers"][-1]["checked"][0]["set_entry"] == "198.18.0.2,tcp:5432"
    lan = explain(policy_file, parse_dest("198.18.9.7:443/udp"), applied)
    assert lan["verdict"] == "allow" and lan["entries"][0]["where"].endswith("p.yaml:5")
    assert lan["layers"][-1]["checked"][0]["set_entry"] == "198.18.9.0/24,udp:443"
    tcp = explain(policy_file, parse_dest("198.18.9.7:443"), applied)
    assert tcp["verdict"] == "deny" and "tcp-reset" in tcp["why"]
    name = explain(policy_file, parse_dest("api.openai.com:443"), applied, guard={"active": 1})
    assert (name["verdict"], name["decided_by"]) == ("deny", "guard")
    assert "raises SecurityError" in name["why"]


def test_explain_and_the_policy_tests_share_one_decision(policy_file):
    """trace() is decide(): the verdicts agree on every kind of packet."""
    ruleset = render_rules(policy_file, {"postgres": [ipaddress.ip_address("198.18.0.2")]})
    from sentinel.policy.decide import decide

    for ip, port, proto in (("198.18.0.2", 5432, "tcp"), ("198.18.0.2", 80, "tcp"),
                            ("198.18.9.1", 443, "udp"), ("::1", 1, "tcp"), ("2001:db8::1", 443, "udp")):  # fmt: skip
        packet = Packet(ipaddress.ip_address(ip), port, proto)
        assert trace(ruleset, packet).verdict == decide(ruleset, packet)


@pytest.mark.parametrize(
    "text,want",
    [
        ("api.openai.com:443", ("api.openai.com", 443, "tcp")),
        ("198.18.5.5:443/udp", ("198.18.5.5", 443, "udp")),
        ("[2001:db8::5]:53/udp", ("2001:db8::5", 53, "udp")),
        ("Postgres.:5432", ("postgres", 5432, "tcp")),
    ],
)
def test_dest_parsing(text, want):
    d = parse_dest(text)
    assert (d.host, d.port, d.protocol) == want


@pytest.mark.parametrize("text", ["postgres", "x:0", "x:70000", "x:1/icmp", "[nothost]:1", ""])
def test_bad_dest_is_bad_input(text):
    with pytest.raises(BadInput, match="is not"):
        parse_dest(text)


def _cli(*args: str, state: Path, policy_env: str | None = None):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SENTINEL_POLICY"}
    env["SENTINEL_STATE_DIR"] = str(state)
    if policy_env:
        env["SENTINEL_POLICY"] = policy_env
    exe = Path(sys.executable).with_name("sentinel")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=60)


def test_cli_bad_input_exits_2_with_the_cause_and_creates_nothing(tmp_path, policy_file):
    state = tmp_path / "state"
    out = _cli("policy", "suggest", "--last", "1h", state=state)
    assert out.returncode == 2 and "no event store at" in out.stderr
    assert not state.exists()  # read-only: not even an empty store
    out = _cli("policy", "suggest", "--last", "soon", state=state)
    assert out.returncode == 2 and "--last: 'soon' is not a positive duration" in out.stderr
    out = _cli("policy", "suggest", "--from-bundle", str(tmp_path), state=state)
    assert out.returncode == 2 and "no MANIFEST.sha256 (not an evidence bundle)" in out.stderr
    out = _cli("explain", "postgres:5432", state=state)
    assert out.returncode == 2 and "no policy: pass --policy FILE" in out.stderr
    out = _cli("explain", "postgres:5432", "--format", "yaml", state=state)
    assert out.returncode == 2 and "--format: 'yaml'" in out.stderr
    out = _cli("explain", "198.18.9.1:443/udp", state=state, policy_env=policy_file.source)
    assert out.returncode == 0 and out.stdout.startswith("198.18.9.1:443/udp: ALLOW")
    out = _cli("explain", "198.18.9.1:443", state=state, policy_env=policy_file.source)
    assert out.returncode == 1 and "DENY (decided by netfilter; mode enforce)" in out.stdout
    assert not state.exists()


def test_cli_window_selects_the_attempts_and_leaves_the_store_as_it_was(tmp_path):
    import hashlib

    from sentinel.store import events as ev

    state = tmp_path / "state"
    conn = ev.connect(ev.db_path(state))
    now = time.time()  # --last/--until count from the CLI's clock, not from import time
    old, recent = now - 7200, now - 60
    ev.write_events(
        conn,
        [
            dns("old.example.com", ["198.18.5.1"], ts=old - NOW + 100),
            net("198.18.5.1", 443, ts=old - NOW + 101),
            dns("new.example.com", ["198.18.5.2"], ts=recent - NOW + 100),
            net("198.18.5.2", 443, ts=recent - NOW + 101),
        ],
        {},
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    db = ev.db_path(state)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    last = _cli("policy", "suggest", "--last", "10m", state=state)
    assert last.returncode == 0, last.stderr
    assert [a.host for a in parse_policy(last.stdout).allow] == ["new.example.com"]
    window = _cli(
        "policy", "suggest", "--since", str(old - 10), "--until", "90m", state=state
    )  # fmt: skip
    assert window.returncode == 0, window.stderr
    assert [a.host for a in parse_policy(window.stdout).allow] == ["old.example.com"]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
