"""`sentinel apply` and `sentinel run` (start-up apply, pin change, reload) go through the one
apply-a-policy helper, `sentinel.run.applying.apply_policy`. Rootless: the single kernel runner
`netfilter._run` is the fake kernel of test_netfilter_text.py (recorded iptables-save / ipset
outputs); the state directory is a real one under tmp_path. Real-kernel applies are covered by
test_enforce.py and test_run.py."""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path

import pytest
from test_netfilter_text import DATA, PINS, V4, V6, FakeKernel, install

from sentinel.errors import SentinelError
from sentinel.evidence import metrics
from sentinel.guard import compile as guard_compile
from sentinel.policy import commands
from sentinel.run import applying, daemon, reload
from sentinel.run.context import Context
from sentinel.store import state

PIN_ARGS = [f"postgres={ip}" for ip in PINS["postgres"]]


class HeldPins:
    """The daemon's pin manager, holding fixed answers (no DNS here)."""

    def __init__(self, pins: dict) -> None:
        self.current = {n: [ipaddress.ip_address(a) for a in v] for n, v in pins.items()}

    def pins(self) -> dict:
        return dict(self.current)

    def valid_until(self) -> dict:
        return {}

    def names(self) -> frozenset:
        return frozenset(self.current)

    def set_names(self, names) -> None:
        pass

    def refresh_all(self, names=None, batch: bool = False) -> None:
        pass


class NeverHolds(FakeKernel):
    """Accepts every restore, but reads back as if nothing had been applied."""

    def run(self, cmd, stdin=None):
        applied = dict(self.applied)
        out = super().run(cmd, stdin)
        self.applied = applied
        return out


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    shutil.copy(DATA / "policy.yaml", path)
    return path


@pytest.fixture
def calls(monkeypatch, state_dir):
    """Every call of the helper, from whichever path; the link is fixed (no netdev table)."""
    seen: list[dict] = []
    real = applying.apply_policy

    def spy(*args, **kwargs):
        seen.append({"args": args, **kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(applying, "apply_policy", spy)
    monkeypatch.setattr("sentinel.enforce.netdev.read_link", lambda: None)
    monkeypatch.setattr(daemon, "read_link", lambda: None)
    return seen


def cli_apply(policy_file: Path) -> list[str]:
    out: list[str] = []
    commands.run_apply(policy_file, False, "nft", PIN_ARGS, lambda text, **_: out.append(text))
    return out


def make_daemon(policy_file: Path) -> tuple[daemon.Daemon, list]:
    from sentinel.policy.load import load_policy

    events: list = []
    d = daemon.Daemon(policy_file, backend="nft")
    d.ctx = Context(load_policy(policy_file), policy_file, "nft", sinks=[events.append])
    d.ctx.pins = HeldPins(PINS)  # type: ignore[assignment]
    return d, events


def restores(kernel: FakeKernel) -> list[str]:
    return kernel.stdin_of(f"{V4}-restore") + kernel.stdin_of(f"{V6}-restore")


def test_cli_and_daemon_apply_through_the_one_helper_with_the_same_kernel_text(
    monkeypatch, policy_file, calls, state_dir
):
    cli_kernel = install(monkeypatch, FakeKernel())
    assert cli_apply(policy_file)[-1].startswith("applied ")
    cli_state = json.loads((state_dir / state.APPLIED).read_text())
    assert guard_compile.allowlist_path(state_dir).exists()

    d, _ = make_daemon(policy_file)
    daemon_kernel = install(monkeypatch, FakeKernel())
    d.apply(d.ctx.policy, reason="start")
    assert [c["args"][2:] for c in calls] == [("nft", None), ("nft", None)]  # backend, link
    assert calls[0].get("pending_ok", False) is False and calls[1]["pending_ok"] is True
    assert restores(daemon_kernel) == restores(cli_kernel) and len(restores(cli_kernel)) == 2
    daemon_state = json.loads((state_dir / state.APPLIED).read_text())
    for key in ("ruleset_sha256", "ruleset_text", "pins", "policy_sha256", "mode", "backend"):
        assert daemon_state[key] == cli_state[key]
    assert d.expected is not None and d.expected.sha256() == cli_state["ruleset_sha256"]
    assert json.loads((state_dir / "daemon.json").read_text())["ready"] is False


def test_a_pin_change_is_the_helper_with_the_previous_ruleset_sets_only(
    monkeypatch, policy_file, calls, state_dir
):
    d, _ = make_daemon(policy_file)
    kernel = install(monkeypatch, FakeKernel())
    d.apply(d.ctx.policy, reason="start")
    first, applied_at = d.expected, json.loads((state_dir / state.APPLIED).read_text())
    kernel.calls.clear()
    moved = {"postgres": [ipaddress.ip_address("198.18.0.11")]}
    d._pins_changed(moved)
    assert calls[-1]["previous"] is first and calls[-1]["ruleset"] is d.expected
    assert not restores(kernel)  # no iptables: set entries only
    assert any("198.18.0.11" in (doc or "") for cmd, doc in kernel.calls if cmd[0] == "ipset")
    after = json.loads((state_dir / state.APPLIED).read_text())
    assert after["pins"] == {"postgres": ["198.18.0.11"]}
    assert after["applied_at"] == applied_at["applied_at"]  # full=False: counters not reset


def test_reload_goes_through_the_helper(monkeypatch, policy_file, calls, state_dir):
    d, events = make_daemon(policy_file)
    install(monkeypatch, FakeKernel())
    d.apply(d.ctx.policy, reason="start")
    monkeypatch.setattr(reload, "retune", lambda _daemon, _policy: None)  # no resolver here
    policy_file.write_text(policy_file.read_text() + "dns: {min_ttl: 45s}\n")  # same rules
    d.reload()
    assert [e.kind for e in events] == ["policy_reloaded"]
    assert len(calls) == 2 and calls[1]["args"][0].sha256 == d.ctx.policy.sha256
    applied = json.loads((state_dir / state.APPLIED).read_text())
    assert applied["policy_sha256"] == d.ctx.policy.sha256


def test_the_steps_run_in_order(monkeypatch, policy_file, calls, state_dir):
    steps: list[str] = []

    def step(name, real):
        def wrapper(*args, **kwargs):
            steps.append(name)
            return real(*args, **kwargs)

        return wrapper

    from sentinel.enforce import netfilter

    monkeypatch.setattr(applying, "prepare_ruleset", step("prepare", applying.prepare_ruleset))
    install(monkeypatch, FakeKernel())
    monkeypatch.setattr(netfilter, "apply", step("kernel", netfilter.apply))
    monkeypatch.setattr(applying, "record_applied", step("record", applying.record_applied))
    monkeypatch.setattr(
        guard_compile, "write_allowlist", step("allowlist", guard_compile.write_allowlist)
    )
    cli_apply(policy_file)
    assert steps == ["prepare", "kernel", "record", "allowlist"]

    steps.clear()
    d, _ = make_daemon(policy_file)
    d.ctx.applied_hooks.append(lambda _p, _pins: steps.append("hooks"))
    monkeypatch.setattr(daemon, "snapshot_counters", lambda *_: steps.append("snapshot"))
    monkeypatch.setattr(metrics, "observe_apply", lambda _s, ok: steps.append(f"timed {ok}"))
    d.apply(d.ctx.policy, reason="start")
    assert steps == ["prepare", "snapshot", "kernel", "timed True", "record", "hooks"]


def test_a_verify_mismatch_raises_and_records_nothing(monkeypatch, policy_file, calls, state_dir):
    install(monkeypatch, NeverHolds())
    with pytest.raises(SentinelError, match=applying.NOT_HELD):
        cli_apply(policy_file)
    assert not (state_dir / state.APPLIED).exists()
    assert not guard_compile.allowlist_path(state_dir).exists()

    d, _ = make_daemon(policy_file)
    timed: list[bool] = []
    monkeypatch.setattr(metrics, "observe_apply", lambda _s, ok: timed.append(ok))
    d.ctx.applied_hooks.append(lambda *_: pytest.fail("an applied hook ran"))
    with pytest.raises(SentinelError, match=applying.NOT_HELD):
        d.apply(d.ctx.policy, reason="start")
    assert timed == [False] and d.expected is None
    assert not (state_dir / state.APPLIED).exists() and not (state_dir / "daemon.json").exists()


def test_a_reload_the_kernel_does_not_hold_is_rejected_and_keeps_the_state(
    monkeypatch, policy_file, calls, state_dir
):
    d, events = make_daemon(policy_file)
    install(monkeypatch, FakeKernel())
    d.apply(d.ctx.policy, reason="start")
    before = (state_dir / state.APPLIED).read_text()
    kept = d.ctx.policy.sha256
    install(monkeypatch, NeverHolds(applied=True))  # reads back the old rules only
    policy_file.write_text(
        policy_file.read_text() + "  - {name: more, cidr: 198.18.8.0/24, ports: [443]}\n"
    )
    d.reload()
    (event,) = events
    assert event.kind == "reload_rejected" and event.detail["error"] == applying.NOT_HELD
    assert event.detail["kept"] == kept == d.ctx.policy.sha256
    assert (state_dir / state.APPLIED).read_text() == before
