"""Rootless tests of the exact commands and restore documents netfilter.py produces (as
sshuttle's tests patch `ipt()`): `_run` is replaced by a fake kernel that answers with
iptables-save / ipset outputs recorded from a real namespace (tests/data/netfilter) and records
every argument list and stdin document. Real-kernel behaviour is covered by test_enforce.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sentinel.enforce import netfilter
from sentinel.enforce.render import OUR_SETS, SET_NAME, IpSet
from sentinel.errors import SentinelError
from sentinel.policy.decide import prepare_ruleset
from sentinel.policy.load import load_policy

DATA = Path(__file__).parent / "data" / "netfilter"
PINS = {"postgres": ["198.18.0.10", "2001:db8::10"]}
V4, V6 = "iptables-nft", "ip6tables-nft"


class FakeKernel:
    """Answers the commands netfilter.py runs. A family's tables read as the recorded applied
    state once a restore for that family succeeded; `fail` names a command that fails."""

    def __init__(self, applied: bool = False, fail: str | None = None) -> None:
        self.applied = {4: applied, 6: applied}
        self.sets = applied
        self.fail = fail
        self.calls: list[tuple[list[str], str | None]] = []

    def run(self, cmd: list[str], stdin: str | None = None) -> str:
        self.calls.append((cmd, stdin))
        tool = cmd[0]
        if tool == self.fail:
            raise SentinelError(f"{' '.join(cmd)} failed: scripted refusal")
        family = 6 if tool.startswith("ip6") else 4
        if tool.endswith("-save"):
            name = ("applied" if self.applied[family] else "empty") + f".v{family}"
            return (DATA / name).read_text()
        lines = (stdin or "").splitlines()
        if tool.endswith("-restore"):
            if "-I OUTPUT 1 -j SENTINEL-OUT" in lines:
                self.applied[family] = True
            elif "-X SENTINEL-OUT" in lines:
                self.applied[family] = False
            return ""
        if cmd[:2] == ["ipset", "list"]:
            return (DATA / "ipset-list").read_text() if self.sets else ""
        if cmd == ["ipset", "save"]:  # every set: ours, as recorded, and one of someone else's
            return FOREIGN_SET + "".join(
                (DATA / f"ipset-save.{name}").read_text() for _f, name in OUR_SETS if self.sets
            )
        if cmd[:2] == ["ipset", "save"]:
            return (DATA / f"ipset-save.{cmd[2]}").read_text()
        if cmd[:2] == ["ipset", "restore"] or cmd[:3] == ["ipset", "-exist", "restore"]:
            if any(line.startswith("create ") for line in lines):
                self.sets = True
            if f"destroy {SET_NAME[4]}" in lines:
                self.sets = False
            return ""
        raise AssertionError(f"unexpected command {cmd}")

    def netdev(self, text: str, current: str) -> None:
        assert text == current == "", "no netdev table in these rulesets"

    def argv(self) -> list[list[str]]:
        return [cmd for cmd, _ in self.calls]

    def stdin_of(self, tool: str) -> list[str]:
        return [doc for cmd, doc in self.calls if cmd[0] == tool and doc is not None]


@pytest.fixture
def ruleset():
    return prepare_ruleset(load_policy(DATA / "policy.yaml"), PINS)


def install(monkeypatch, kernel: FakeKernel) -> FakeKernel:
    monkeypatch.setattr(netfilter, "_run", kernel.run)
    monkeypatch.setattr(
        netfilter, "_read_sets_netlink", lambda counters=True: None
    )  # the text path here
    monkeypatch.setattr(netfilter, "_netlink_session", lambda: None)  # sets filled by ipset
    monkeypatch.setattr(netfilter, "ensure_not_root_netns", lambda: None)
    # the netdev table (nft) is absent here: these rulesets have no link (test_l2_netns.py)
    monkeypatch.setattr(netfilter, "read_netdev", lambda: ("", {}))
    monkeypatch.setattr(netfilter, "apply_netdev", kernel.netdev)
    return kernel


READ_STATE = [[f"{V4}-save", "-c"], [f"{V6}-save", "-c"], ["ipset", "save"]]
FOREIGN_SET = (
    "create other hash:net,port family inet hashsize 1024 maxelem 65536 counters\n"
    "add other 198.18.9.9,tcp:22 packets 3 bytes 180\n"
)
RESTORE = ["--noflush", "--wait"]


# What removing our IPv4 part must send: jumps deleted, our chains flushed and deleted, one
# commit per table, built-in chains untouched (rollback of a first apply, and teardown).
REMOVAL_V4 = [
    "*filter",
    "-D OUTPUT -j SENTINEL-OUT",
    "-F SENTINEL-DENY",
    "-F SENTINEL-OUT",
    "-X SENTINEL-DENY",
    "-X SENTINEL-OUT",
    "COMMIT",
    "*nat",
    "-D OUTPUT -j SENTINEL-DNS",
    "-F SENTINEL-DNS",
    "-X SENTINEL-DNS",
    "COMMIT",
]


def expected_doc(ruleset, family: int) -> str:
    """What a first apply must send for one family: per table our chains declared (which
    flushes them), our hook inserted at position 1, our rules, one COMMIT."""
    out = []
    for table in ("filter", "nat"):
        chains = ruleset.chains(family, table)
        if not chains:
            continue
        out += [f"*{table}", *(f":{c} - [0:0]" for c in chains)]
        out += [
            f"-I {h.builtin} 1 -j {h.chain}"
            for h in ruleset.hooks
            if (h.family, h.table) == (family, table)
        ]
        out += [r.save_line() for f, r in ruleset.rules if f == family and r.table == table]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def test_first_apply_commands_and_documents(monkeypatch, ruleset):
    kernel = install(monkeypatch, FakeKernel())
    netfilter.apply(ruleset)
    assert kernel.argv() == [
        *READ_STATE,  # what is there (nothing of ours): also what a rollback restores
        ["ipset", "restore"],  # staged sets swapped in
        [f"{V4}-restore", *RESTORE],
        [f"{V6}-restore", *RESTORE],
        *READ_STATE,  # read back: exactly the ruleset, before the old set contents go
        ["ipset", "restore"],  # staging copies destroyed
    ]
    assert kernel.stdin_of(f"{V4}-restore") == [expected_doc(ruleset, 4)]
    assert kernel.stdin_of(f"{V6}-restore") == [expected_doc(ruleset, 6)]
    staged, cleanup = kernel.stdin_of("ipset")
    for s in ruleset.sets:
        assert f"{s.create_line()}\n{s.create_line(s.name + '-new')}\n" in staged
        # TCP entries without the protocol's name (ipset's default; no /etc/protocols lookup)
        assert all(f"add {s.name}-new {e.replace(',tcp:', ',')}\n" in staged for e in s.entries)
        assert f"swap {s.name}-new {s.name}\n" in staged
    assert "add sentinel-allow4-new 198.18.0.10,5432\n" in staged
    kinds = [line.split()[0] for line in staged.splitlines()]
    # every swap after every add: an entry ipset refuses leaves all live sets as they were
    assert kinds.index("swap") > len(kinds) - 1 - kinds[::-1].index("add")
    assert kinds[-len(ruleset.sets) :] == ["swap"] * len(ruleset.sets)
    assert cleanup == "".join(f"destroy {s.name}-new\n" for s in ruleset.sets)


def test_reapply_of_the_same_rules_runs_no_restore(monkeypatch, ruleset):
    kernel = install(monkeypatch, FakeKernel(applied=True))
    state = netfilter.apply(ruleset)
    assert state.rules_replaced is False
    assert kernel.argv() == [*READ_STATE, *READ_STATE]
    assert not any(cmd[0].endswith("-restore") or "restore" in cmd for cmd in kernel.argv())


def test_reapply_that_moves_a_hook_deletes_the_old_jump_first(monkeypatch, ruleset):
    """The recorded kernel has our rules; a changed ruleset (another NFLOG group) rewrites
    them: the existing jump is deleted before the new one is inserted, in one commit."""
    policy = load_policy(DATA / "policy.yaml")
    changed = prepare_ruleset(dataclasses.replace(policy, nflog_group=7), PINS)
    kernel = install(monkeypatch, FakeKernel(applied=True))
    # the recorded kernel still reads as group 1 afterwards: the read back refuses it
    with pytest.raises(SentinelError, match=netfilter.NOT_HELD):
        netfilter.apply(changed)
    doc4 = kernel.stdin_of(f"{V4}-restore")[0]
    lines = doc4.splitlines()
    assert lines.index("-D OUTPUT -j SENTINEL-OUT") < lines.index("-I OUTPUT 1 -j SENTINEL-OUT")
    assert lines.count("COMMIT") == 2 and "--nflog-group 7" in doc4


def test_refusal_midway_rolls_back_the_committed_family(monkeypatch, ruleset):
    kernel = install(monkeypatch, FakeKernel(fail=f"{V6}-restore"))
    with pytest.raises(SentinelError, match="scripted refusal"):
        netfilter.apply(ruleset)
    restores = kernel.stdin_of(f"{V4}-restore")
    assert restores[0] == expected_doc(ruleset, 4)
    rollback = restores[1].splitlines()
    # a first apply: the tables only it touched lose our jump and chains again
    assert rollback == REMOVAL_V4
    sets_doc = kernel.stdin_of("ipset")[-1].splitlines()
    for s in ruleset.sets:
        assert f"swap {s.name}-new {s.name}" in sets_doc and f"destroy {s.name}" in sets_doc


def test_a_read_back_that_differs_rolls_everything_back(monkeypatch):
    """The kernel (as recorded) holds another pin than the ruleset asks for: nothing stays."""
    other = prepare_ruleset(load_policy(DATA / "policy.yaml"), {"postgres": ["198.18.0.11"]})
    kernel = install(monkeypatch, FakeKernel())
    with pytest.raises(SentinelError, match=netfilter.NOT_HELD):
        netfilter.apply(other)
    assert kernel.argv()[-8:] == [
        *READ_STATE,  # the read back that differs
        [f"{V4}-save"],
        [f"{V4}-restore", *RESTORE],
        [f"{V6}-save"],
        [f"{V6}-restore", *RESTORE],
        ["ipset", "restore"],
    ]
    assert kernel.stdin_of(f"{V4}-restore")[1].splitlines() == REMOVAL_V4
    sets_doc = kernel.stdin_of("ipset")[-1].splitlines()
    for s in other.sets:  # old contents swapped back, the sets only this apply made destroyed
        assert f"swap {s.name}-new {s.name}" in sets_doc and f"destroy {s.name}" in sets_doc


def test_teardown_removes_only_ours(monkeypatch):
    kernel = install(monkeypatch, FakeKernel(applied=True))
    assert netfilter.teardown("nft") is True
    (doc4,) = kernel.stdin_of(f"{V4}-restore")
    assert doc4.splitlines() == REMOVAL_V4
    assert ":INPUT" not in doc4 and "-F OUTPUT" not in doc4  # built-in chains untouched
    assert kernel.stdin_of("ipset")[-1] == "".join(f"destroy {n}\n" for _f, n in OUR_SETS)
    assert not any(cmd[0] == "nft" for cmd in kernel.argv())  # no table was ours to delete


def test_read_state_parses_the_recorded_kernel(monkeypatch, ruleset):
    install(monkeypatch, FakeKernel(applied=True))
    state = netfilter.read_state()
    assert state.sha256() == ruleset.sha256()
    assert {s.name for s in state.sets} == {name for _family, name in OUR_SETS}
    assert state.set_counters[(SET_NAME[4], "198.18.0.10,tcp:5432")] == (0, 0)
    assert ("other", "198.18.9.9,tcp:22") not in state.set_counters  # not ours: not read
    assert "other" in state.set_names and "other" not in {s.name for s in state.sets}


def test_a_big_set_is_staged_with_room_for_its_entries(monkeypatch, ruleset):
    """Above 4,096 entries the staging copy is created with hashsize ~entries/4 (no rehash on
    the way), a small one as before; the live set, and what dry-run prints, are unchanged."""
    many = tuple(f"198.19.{i // 256}.{i % 256},tcp:443" for i in range(20_000))
    big = dataclasses.replace(
        ruleset,
        sets=tuple(IpSet(s.name, s.family, many) if s.family == 4 else s for s in ruleset.sets),
    )
    kernel = install(monkeypatch, FakeKernel())
    with pytest.raises(SentinelError, match=netfilter.NOT_HELD):  # the recorded kernel differs
        netfilter.apply(big)
    staged = kernel.stdin_of("ipset")[0].splitlines()
    assert f"{big.sets[0].create_line(SET_NAME[4] + '-new')} hashsize 8192" in staged
    assert big.sets[0].create_line() in staged  # the live set: as always
    small = [s for s in big.sets if s.family == 6][0]
    assert small.create_line(small.name + "-new") in staged


class FakeSession:
    """ipsetload.Session as the kernel answers it here: adds go in, the swap of `refuse` fails."""

    def __init__(self, refuse: str) -> None:
        self.refuse, self.calls = refuse, []

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add(self, name: str, family: int, requests: list) -> None:
        self.calls.append(("add", name))

    def swap(self, name: str, other: str) -> None:
        self.calls.append(("swap", name))
        if other == self.refuse:
            raise SentinelError(f"ipset swap {name} {other} refused by the kernel: scripted")

    def destroy(self, name: str) -> None:
        self.calls.append(("destroy", name))


def test_a_refused_swap_puts_back_the_sets_already_swapped(monkeypatch, ruleset):
    """The netlink fill: every add before any swap; when the second swap is refused, the first
    set gets its old contents back, every staging copy and every set this apply made go, and
    no rule was touched."""
    kernel = install(monkeypatch, FakeKernel())
    session = FakeSession(refuse=SET_NAME[6])
    monkeypatch.setattr(netfilter, "_netlink_session", lambda: session)
    with pytest.raises(SentinelError, match="scripted"):
        netfilter.apply(ruleset)
    kinds = [kind for kind, _ in session.calls]
    n = len(ruleset.sets)
    assert kinds[:n] == ["add"] * n
    swaps = [("swap", f"{SET_NAME[4]}-new"), ("swap", f"{SET_NAME[6]}-new")]
    assert session.calls[n : n + 2] == swaps
    (create,) = kernel.stdin_of("ipset")
    assert "add " not in create and "swap " not in create  # the tool only created the sets
    # the undo goes through the session too (a swap a reader holds up is tried again)
    undo = session.calls[n + 2 :]
    assert undo[0] == ("swap", f"{SET_NAME[4]}-new")  # the old contents back first
    assert {("destroy", f"{s.name}-new") for s in ruleset.sets} <= set(undo)
    assert {("destroy", s.name) for s in ruleset.sets} <= set(undo)  # made by this apply
    assert not any(cmd[0].endswith("-restore") for cmd in kernel.argv())
