"""Apply a Ruleset to the kernel; read back what the kernel has (iptables and ipset runs).

Backend: `iptables-restore --noflush` documents (one atomic commit per table and family) plus
`ipset restore` with a swap. python-iptables was the first choice, but building an NFLOG target
with it corrupts the heap (segfault on the next rule, iptables 1.8.9); see docs/netfilter.md.
The default backend is the nf_tables one that Debian's `iptables-save` shows, so an auditor's
own tools see exactly the rules sentinel reports.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field, replace

from sentinel.enforce.render import (
    CHAIN_DENY,
    CHAIN_DNS,
    CHAIN_OUT,
    SET_NAME,
    IpSet,
    Ruleset,
    canonical_lines,
    ruleset_hash,
)
from sentinel.errors import SentinelError

OUR_CHAINS = (CHAIN_OUT, CHAIN_DENY, CHAIN_DNS)
TABLES = ("filter", "nat")
BACKENDS = {
    "nft": {4: "iptables-nft", 6: "ip6tables-nft"},
    "legacy": {4: "iptables-legacy", 6: "ip6tables-legacy"},
}
DEFAULT_BACKEND = "nft"
_COUNTED = re.compile(r"^\[(\d+):(\d+)\] (.*)$")


@dataclass
class KernelState:
    """Our part of the kernel's tables, in the same canonical text as Ruleset.save_text."""

    text: dict[int, str] = field(default_factory=dict)
    sets: list[IpSet] = field(default_factory=list)
    counters: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)  # (fam, line)
    set_counters: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    created_tables: list[str] = field(default_factory=list)  # "6/nat": absent before our apply
    rules_replaced: bool = True  # False: the rules were already in force, only sets changed

    @property
    def present(self) -> bool:
        return any(t.strip() for t in self.text.values()) or bool(self.sets)

    def sha256(self) -> str:
        return ruleset_hash(self.text.get(4, ""), self.text.get(6, ""), self.sets)


_INIT_NET_INO = 0xEFFFFFF9  # init_net's fixed inode on kernels that reserve one


def in_root_netns() -> bool:
    """Is this process in the machine's own network namespace?

    Kernel threads (kthreadd, PID 2) always live there; inside a container's PID namespace
    PID 2 is not kthreadd and the host's namespace is not visible, so the answer is no.
    """
    me = os.stat("/proc/self/ns/net").st_ino
    if me == _INIT_NET_INO:
        return True
    try:
        with open("/proc/2/comm") as f:
            if f.read().strip() == "kthreadd":
                return me == os.stat("/proc/2/ns/net").st_ino
    except OSError:
        pass
    return False


def ensure_not_root_netns() -> None:
    """Refuse to touch netfilter in the machine's own namespace: it would cut the host off."""
    if os.environ.get("SENTINEL_ALLOW_ROOT_NETNS") == "1":
        return
    if in_root_netns():
        raise SentinelError(
            "refusing to change netfilter in the machine's root network namespace: run inside "
            "the app's namespace (ip netns exec NAME, or network_mode: service:APP in compose); "
            "SENTINEL_ALLOW_ROOT_NETNS=1 overrides this on a host that is only the app"
        )


def _run(cmd: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SentinelError(f"{cmd[0]} not found: install iptables and ipset") from None
    except subprocess.TimeoutExpired:
        raise SentinelError(f"{cmd[0]} did not finish in 60 s") from None
    if done.returncode != 0:
        raise SentinelError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def apply(ruleset: Ruleset, backend: str = DEFAULT_BACKEND) -> KernelState:
    """Make the kernel hold exactly `ruleset`. Either everything changes or nothing does.

    When the kernel already holds these exact rules (a restart, a re-apply, a reload that only
    changed the allowlist) only the set entries are brought in line: the rules, and with them
    the NFLOG packet counters that account for attempts made while no sentinel was watching,
    are left alone. `rules_replaced` on the result says which path was taken."""
    ensure_not_root_netns()
    current = read_state(backend)
    if _same_rules(current, ruleset):
        try:
            update_sets(replace(ruleset, sets=tuple(current.sets)), ruleset)
        except SentinelError:  # e.g. a set too small for the new entries: rebuild it all
            return _apply_all(ruleset, backend)
        state = read_state(backend)
        state.rules_replaced = False
        return state
    return _apply_all(ruleset, backend)


def _same_rules(current: KernelState, ruleset: Ruleset) -> bool:
    names = {s.name for s in ruleset.sets}
    return {s.name for s in current.sets} == names and all(
        current.text.get(f) == ruleset.save_text(f) for f in (4, 6)
    )


def _apply_all(ruleset: Ruleset, backend: str) -> KernelState:
    tools = BACKENDS[backend]
    before = {f: _save(tools[f]) for f in (4, 6)}
    created = _stage_sets(ruleset)
    done: list[int] = []
    try:
        for family in (4, 6):
            _run(
                [f"{tools[family]}-restore", "--noflush", "--wait"],
                _restore_doc(ruleset, family, before[family]),
            )
            done.append(family)
    except SentinelError:
        _rollback(ruleset, tools, before, done, created)
        raise
    _run(["ipset", "restore"], "".join(f"destroy {_staging(s.name)}\n" for s in ruleset.sets))
    state = read_state(backend)
    state.created_tables = [
        f"{family}/{table}"
        for family in (4, 6)
        for table in ruleset.tables(family)
        if f"*{table}" not in before[family].splitlines()
    ]
    return state


def _staging(name: str) -> str:
    return f"{name}-new"


def _stage_sets(ruleset: Ruleset) -> list[str]:
    """Fill a staging copy of each set and swap it in (atomic per set). Returns the live
    sets this created (a rollback removes them again)."""
    existing = set(_run(["ipset", "list", "-n"]).split())
    lines = []
    for s in ruleset.sets:
        stage = _staging(s.name)
        if stage in existing:  # left over by an apply that was killed
            lines.append(f"destroy {stage}")
        if s.name not in existing:
            lines.append(s.create_line())
        lines.append(s.create_line(stage))
        lines += [f"add {stage} {e}" for e in s.entries]
        lines.append(f"swap {stage} {s.name}")
    _run(["ipset", "restore"], "\n".join(lines) + "\n")
    return [s.name for s in ruleset.sets if s.name not in existing]


def _rollback(
    ruleset: Ruleset,
    tools: dict[int, str],
    before: dict[int, str],
    done: list[int],
    created: list[str],
) -> None:
    """Put back the rules and set contents that were in force before a failed apply; sets
    that only the failed apply created go again."""
    for family in done:
        doc = _restore_previous(before[family], _save(tools[family]))
        _run([f"{tools[family]}-restore", "--noflush", "--wait"], doc)
    lines = [f"swap {_staging(s.name)} {s.name}\ndestroy {_staging(s.name)}" for s in ruleset.sets]
    _run(["ipset", "restore"], "\n".join(lines + [f"destroy {n}" for n in created]) + "\n")


def _restore_doc(ruleset: Ruleset, family: int, current: str) -> str:
    """One document per family: our chains re-declared (which flushes them) and refilled,
    hooks moved to position 1, all inside one commit per table."""
    jumps = _jumps(current)
    out = []
    for table in TABLES:
        chains = ruleset.chains(family, table)
        if not chains:
            continue
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" for c in chains]
        out += [f"-D {builtin} -j {chain}" for t, builtin, chain in jumps if t == table]
        out += [
            f"-I {h.builtin} 1 -j {h.chain}"
            for h in ruleset.hooks
            if h.family == family and h.table == table
        ]
        out += [r.save_line() for f, r in ruleset.rules if f == family and r.table == table]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _restore_previous(saved: str, current: str) -> str:
    """Bring our part of one family back from `current` to `saved`, one commit per table:
    a table we had before gets its old chains and hook back (the failed apply's jumps
    deleted first); a table only the failed apply touched loses ours again."""
    before, now = _our_lines(saved), _our_lines(current)
    out = []
    for table in dict.fromkeys([*now, *before]):
        lines = before.get(table)
        if lines is None:
            out += _removal(table, now[table], current)
            continue
        jumps = [f"-D {b} -j {c}" for t, b, c in _jumps(current) if t == table]
        decls = [x for x in lines if x.startswith(":")]
        rules = [x for x in lines if x.startswith("-A") and x.split()[1] in OUR_CHAINS]
        hooks = [
            f"-I {x.split()[1]} 1 -j {x.split()[3]}"
            for x in lines
            if x.startswith("-A") and x.split()[1] not in OUR_CHAINS
        ]
        out += [f"*{table}", *decls, *jumps, *rules, *hooks, "COMMIT"]
    return "\n".join(out) + "\n"


def _removal(table: str, lines: list[str], saved: str) -> list[str]:
    """One table's block that deletes our jumps, then flushes and deletes our chains."""
    chains = [x[1:].split()[0] for x in lines if x.startswith(":")]
    jumps = [f"-D {b} -j {c}" for t, b, c in _jumps(saved) if t == table]
    return [
        f"*{table}",
        *jumps,
        *(f"-F {c}" for c in chains),
        *(f"-X {c}" for c in chains),
        "COMMIT",
    ]


def _jumps(saved: str) -> list[tuple[str, str, str]]:
    """(table, builtin chain, our chain) for every jump into our chains, duplicates included."""
    found, table = [], ""
    for line in saved.splitlines():
        line = _COUNTED.sub(r"\3", line)
        if line.startswith("*"):
            table = line[1:]
        parts = line.split()
        if len(parts) == 4 and parts[0] == "-A" and parts[2] == "-j" and parts[3] in OUR_CHAINS:
            if parts[1] not in OUR_CHAINS:
                found.append((table, parts[1], parts[3]))
    return found


def _save(tool: str, counters: bool = False) -> str:
    return _run([f"{tool}-save", *(["-c"] if counters else [])])


def _our_lines(saved: str) -> dict[str, list[str]]:
    """Lines of iptables-save that belong to us, per table; a hook not in position 1 is marked."""
    tables: dict[str, list[str]] = {}
    table, position = "", {}
    for raw in saved.splitlines():
        line = _COUNTED.sub(r"\3", raw)
        if line.startswith("*"):
            table, position = line[1:], {}
            continue
        parts = line.split()
        if line.startswith(":") and line[1:].split()[0] in OUR_CHAINS:
            tables.setdefault(table, []).append(f"{parts[0]} - [0:0]")
        elif len(parts) > 1 and parts[0] == "-A":
            position[parts[1]] = position.get(parts[1], 0) + 1
            if parts[1] in OUR_CHAINS:
                tables.setdefault(table, []).append(line)
            elif parts[-1] in OUR_CHAINS and parts[-2] == "-j":
                suffix = "" if position[parts[1]] == 1 else f" (at position {position[parts[1]]})"
                tables.setdefault(table, []).append(line + suffix)
    return tables


def read_state(backend: str = DEFAULT_BACKEND) -> KernelState:
    """What the kernel holds of ours right now, with packet counters."""
    state = KernelState()
    for family, tool in BACKENDS[backend].items():
        saved = _save(tool, counters=True)
        parts = []
        for table in TABLES:
            lines = _our_lines(saved).get(table)
            if lines:
                decls = [x[1:].split()[0] for x in lines if x.startswith(":")]
                hooks = [x for x in lines if x.startswith("-A") and x.split()[1] not in OUR_CHAINS]
                rules = [x for x in lines if x.startswith("-A") and x.split()[1] in OUR_CHAINS]
                parts += [f"*{table}", *canonical_lines(decls, hooks, rules), "COMMIT"]
        state.text[family] = "\n".join(parts) + "\n" if parts else ""
        state.counters.update(_counters(saved, family))
    state.sets, state.set_counters = _read_sets()
    return state


def _counters(saved: str, family: int) -> dict[tuple[int, str], tuple[int, int]]:
    out = {}
    for raw in saved.splitlines():
        match = _COUNTED.match(raw)
        if match and match.group(3).split()[1] in OUR_CHAINS:
            out[(family, match.group(3))] = (int(match.group(1)), int(match.group(2)))
    return out


def _read_sets() -> tuple[list[IpSet], dict[tuple[str, str], tuple[int, int]]]:
    names = set(_run(["ipset", "list", "-n"]).split())
    sets, counters = [], {}
    for family, name in SET_NAME.items():
        if name not in names:
            continue
        entries = []
        for line in _run(["ipset", "save", name]).splitlines():
            parts = line.split()
            if parts[:1] == ["add"]:
                entries.append(parts[2])
                if "packets" in parts:
                    i = parts.index("packets")
                    counters[(name, parts[2])] = (int(parts[i + 1]), int(parts[i + 3]))
        sets.append(IpSet(name, family, tuple(sorted(entries))))
    return sets, counters


def teardown(backend: str | None = None, created_tables: list[str] | None = None) -> bool:
    """Remove only our chains, jumps and sets, and the tables our apply created if they are
    empty again. Returns whether anything of ours was there."""
    ensure_not_root_netns()
    found = False
    for name in [backend] if backend else list(BACKENDS):
        for family, tool in BACKENDS[name].items():
            doc = _teardown_doc(_save(tool))
            if doc:
                _run([f"{tool}-restore", "--noflush", "--wait"], doc)
                found = True
            if name == "nft":
                _drop_empty_tables(tool, family, created_tables or [])
    names = set(_run(["ipset", "list", "-n"]).split())
    ours = [n for s in SET_NAME.values() for n in (s, _staging(s)) if n in names]
    if ours:
        _run(["ipset", "restore"], "".join(f"destroy {n}\n" for n in ours))
    return found or bool(ours)


def _drop_empty_tables(tool: str, family: int, created: list[str]) -> None:
    """A table that only exists because we applied is deleted once nothing is left in it."""
    saved = _save(tool)
    for table in TABLES:
        if f"{family}/{table}" in created and _table_is_empty(saved, table):
            _run(["nft", "delete", "table", "ip" if family == 4 else "ip6", table])


def _table_is_empty(saved: str, table: str) -> bool:
    lines, inside = [], False
    for line in saved.splitlines():
        if line.startswith("*"):
            inside = line == f"*{table}"
        elif inside and line != "COMMIT" and not line.startswith("#"):
            lines.append(line)
    if not inside and not lines:
        return False  # table absent: nothing to delete
    return all(x.startswith(":") and " ACCEPT " in x for x in lines)


def _teardown_doc(saved: str) -> str:
    out = []
    for table, lines in _our_lines(saved).items():
        out += _removal(table, lines, saved)
    return "\n".join(out) + "\n" if out else ""


def update_sets(old: Ruleset, new: Ruleset) -> None:
    """Fast path for a pin change (issue 4): only set entries differ, so no iptables run.

    One `ipset restore` adds the new entries before it deletes the retired ones: there is no
    moment with fewer addresses allowed than in both rulesets, and the per-entry counters of
    unchanged entries survive (a swap would zero them). `-exist` makes it idempotent.
    """
    ensure_not_root_netns()
    before = {s.name: set(s.entries) for s in old.sets}
    adds, dels = [], []
    for s in new.sets:
        current = before.get(s.name, set())
        adds += [f"add {s.name} {e}" for e in sorted(set(s.entries) - current)]
        dels += [f"del {s.name} {e}" for e in sorted(current - set(s.entries))]
    if adds or dels:
        _run(["ipset", "-exist", "restore"], "\n".join(adds + dels) + "\n")


def evidence_text(backend: str = DEFAULT_BACKEND) -> dict[str, str]:
    """The kernel's own words for the evidence bundle: `iptables-save -c` per family and
    `ipset save` of our sets. Read-only; a tool that fails leaves a comment saying so."""

    def output(cmd: list[str]) -> str:
        try:
            return _run(cmd)
        except SentinelError as exc:
            return f"# {exc.message}\n"

    tools = BACKENDS.get(backend, BACKENDS[DEFAULT_BACKEND])
    return {
        "iptables-save-v4.txt": output([f"{tools[4]}-save", "-c"]),
        "iptables-save-v6.txt": output([f"{tools[6]}-save", "-c"]),
        "ipset-save.txt": "".join(output(["ipset", "save", name]) for name in SET_NAME.values()),
    }
