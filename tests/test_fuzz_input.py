"""Hostile input: the policy loader and CLI arguments never crash, always name the cause."""

from __future__ import annotations

import re
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel import cli
from sentinel.policy.load import Policy, PolicyError, parse_policy

LINE = re.compile(r"^p\.yaml:\d+: \S")
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
keys = st.sampled_from(
    [
        "version",
        "mode",
        "allow",
        "dns",
        "alerts",
        "tests",
        "name",
        "host",
        "cidr",
        "ports",
        "protocol",
        "to",
        "expect",
        "slack",
        "webhook_url_env",
        "routing",
        "P1",
        "min_ttl",
        "mark",
        "nflog_group",
        "monitor",
        "x",
    ]
)
documents = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(keys, kids, max_size=5)),
    max_leaves=25,
)


def check_outcome(text: str) -> None:
    try:
        policy = parse_policy(text, "p.yaml")
    except PolicyError as exc:
        assert exc.code == 2
        lines = exc.message.splitlines()
        assert lines and all(LINE.match(x) for x in lines), lines
        return
    assert isinstance(policy, Policy)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_structured_garbage_never_crashes_the_loader(doc):
    check_outcome(yaml.safe_dump(doc))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_raw_text_never_crashes_the_loader(text):
    check_outcome(text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "name": st.text(max_size=10),
                "host": st.text(max_size=20),
                "ports": st.lists(st.integers(-5, 70_000), max_size=3),
                "protocol": st.sampled_from(["tcp", "udp", "icmp", ""]),
            }
        ),
        max_size=4,
    )
)
def test_near_valid_allow_entries(entries):
    check_outcome(yaml.safe_dump({"version": 1, "allow": entries}))


STATIC_PINS = tuple(
    arg
    for pin in ("postgres=198.18.0.10", "neo4j=198.18.0.11", "ollama=198.18.0.12")
    for arg in ("--pin", pin)
)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["sentinel", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code or 0, out.err


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=40
    )
)
def test_cli_arguments_give_clear_errors(monkeypatch, capsys, tmp_path, value):
    # Runs in the test runner's own namespace, so only paths that touch neither the kernel nor
    # the network: every name is pinned statically (no lookup), and `status` gets only invalid
    # formats, which it refuses before it reads the kernel.
    dry = ("apply", "--dry-run", "--policy", "policies/mem0.yaml", *STATIC_PINS)
    for args in (
        ("check", value or "x"),
        (*dry, "--pin", value),
        (*dry, "--backend", value),
        *((("status", "--format", value),) if value not in ("json", "table") else ()),
    ):
        code, err = run_cli(monkeypatch, capsys, *args)
        assert code in (0, 1, 2), (args, code)
        assert "Traceback" not in err
        if code == 2:
            assert err.strip(), "exit 2 must say why"
