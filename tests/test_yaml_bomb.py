"""YAML anchors and aliases are refused (a 415-byte alias bomb took 47 s and 2.7 GB before):
`check`, `apply` and the daemon's hot reload all answer at once with file:line, exit 2."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest

from sentinel.lab.netns import PYTHON
from sentinel.policy.load import PolicyError, parse_policy
from tests.conftest import editor_save, start

SENTINEL = str(Path(PYTHON).with_name("sentinel"))


def bomb() -> str:
    """The classic billion-laughs shape: nine levels of nine aliases each."""
    lines = ["version: 1", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        refs = ",".join(f"*a{i - 1}" for _ in range(9))
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append("allow: *a8")
    return "\n".join(lines) + "\n"


def _limit_memory() -> None:  # a regression fails with MemoryError, not a swapping machine
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run_limited(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory
    )


def test_bomb_is_small_and_refused_with_the_line_of_the_first_anchor():
    text = bomb()
    assert len(text) < 600
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "bomb.yaml")
    assert str(err.value) == (
        "bomb.yaml:2: YAML anchors and aliases are not allowed (anchor &a0); write the values out"
    )


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("version: 1\nallow:\n  - &e {name: a, cidr: 198.18.0.0/24, ports: [1]}\n", 3, "anchor &e"),
        ("version: 1\nallow: []\nx: *nope\n", 3, "alias *nope"),
        ("version: 1\nallow:\n  - {name: a, cidr: 198.18.0.0/24, ports: &p [1]}\n", 3, "anchor &p"),
    ],
)
def test_every_anchor_or_alias_is_refused(text, line, what):
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.yaml")
    assert f"p.yaml:{line}: YAML anchors and aliases are not allowed ({what})" in str(err.value)


def test_ampersand_and_star_inside_strings_are_fine():
    text = (
        'version: 1\n# a comment with & and *\nallow:\n  - {name: a, host: "db", ports: [1]}\n'
        "alerts: {slack: {webhook_url_env: SLACK, channel: '#a&b*'}}\n"
    )
    policy = parse_policy(text)
    assert policy.allow[0].host == "db"
    assert policy.alerts.sinks[0].options["channel"] == "#a&b*"


def test_check_refuses_the_bomb_exit_2(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    out = run_limited(SENTINEL, "check", str(path))
    assert out.returncode == 2, out
    assert f"{path}:2: YAML anchors and aliases are not allowed (anchor &a0)" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.netns
def test_apply_refuses_the_bomb_exit_2_and_applies_nothing(topo, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    out = run_limited("ip", "netns", "exec", topo.ns("app"), SENTINEL, "apply", "-p", str(path))
    assert out.returncode == 2, out
    assert f"{path}:2: YAML anchors and aliases are not allowed" in out.stderr
    assert "SENTINEL" not in topo.run("app", "iptables-nft-save").stdout


@pytest.mark.netns
def test_hot_reload_rejects_the_bomb_and_keeps_the_rules(upstream, tmp_path):
    topo = upstream
    s = start(topo, tmp_path)
    policy = tmp_path / "policy.yaml"
    rss_before = _rss_kib(s.proc.pid)
    editor_save(policy, bomb())
    rejected = s.wait_event("reload_rejected", timeout=30)
    assert "YAML anchors and aliases are not allowed (anchor &a0)" in rejected["detail"]["error"]
    assert f"{policy}:2:" in rejected["detail"]["error"]
    assert topo.probe("tcp", "198.18.0.2", 5432)["ok"]  # the old rules are still in force
    assert _rss_kib(s.proc.pid) < rss_before + 200 * 1024  # nothing was expanded
    assert s.stop() == 0


def _rss_kib(pid: int) -> int:
    """RSS of the sentinel under `ip netns exec` (the exec replaces the wrapper: same pid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
