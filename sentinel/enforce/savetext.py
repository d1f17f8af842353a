"""Pure text of the kernel's dumps: what of `iptables-save` is ours, the restore documents
that put rules in, roll them back and take them out, and `ipset save` parsed into sets.

No process runs here: netfilter.py runs the tools and hands their output to these functions
(test_netfilter_text.py compares their documents line by line).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sentinel.enforce.kernelstate import (  # noqa: F401 - KernelState: re-exported
    OUR_CHAINS,
    OUR_SET_FAMILY,
    OUR_SETS,
    TABLES,
    IpSet,
    KernelState,
    canonical_lines,
    our_sets,
)

if TYPE_CHECKING:
    from sentinel.enforce.render import Ruleset

_COUNTED = re.compile(r"^\[(\d+):(\d+)\] (.*)$")
# `add NAME ENTRY [packets P bytes B]` as `ipset save` prints one entry of our sets
_SET_ENTRY = re.compile(r"^add (\S+) (\S+)(?:.*? packets (\d+) bytes (\d+))?", re.M)


def restore_doc(ruleset: Ruleset, family: int, current: str) -> str:
    """One document per family: our chains re-declared (which flushes them) and refilled,
    hooks moved to position 1, all inside one commit per table."""
    jumps = jumps_into_ours(current)
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


def restore_previous(saved: str, current: str) -> str:
    """Bring our part of one family back from `current` to `saved`, one commit per table:
    a table we had before gets its old chains and hook back (the failed apply's jumps
    deleted first); a table only the failed apply touched loses ours again."""
    before, now = our_lines(saved), our_lines(current)
    out = []
    for table in dict.fromkeys([*now, *before]):
        lines = before.get(table)
        if lines is None:
            out += removal(table, now[table], current)
            continue
        jumps = [f"-D {b} -j {c}" for t, b, c in jumps_into_ours(current) if t == table]
        decls = [x for x in lines if x.startswith(":")]
        rules = [x for x in lines if x.startswith("-A") and x.split()[1] in OUR_CHAINS]
        hooks = [
            f"-I {x.split()[1]} 1 -j {x.split()[3]}"
            for x in lines
            if x.startswith("-A") and x.split()[1] not in OUR_CHAINS
        ]
        out += [f"*{table}", *decls, *jumps, *rules, *hooks, "COMMIT"]
    return "\n".join(out) + "\n"


def removal(table: str, lines: list[str], saved: str) -> list[str]:
    """One table's block that deletes our jumps, then flushes and deletes our chains."""
    chains = [x[1:].split()[0] for x in lines if x.startswith(":")]
    jumps = [f"-D {b} -j {c}" for t, b, c in jumps_into_ours(saved) if t == table]
    return [
        f"*{table}",
        *jumps,
        *(f"-F {c}" for c in chains),
        *(f"-X {c}" for c in chains),
        "COMMIT",
    ]


def teardown_doc(saved: str) -> str:
    out = []
    for table, lines in our_lines(saved).items():
        out += removal(table, lines, saved)
    return "\n".join(out) + "\n" if out else ""


def jumps_into_ours(saved: str) -> list[tuple[str, str, str]]:
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


def our_lines(saved: str) -> dict[str, list[str]]:
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


def family_text(saved: str) -> str:
    """Our part of one family's `iptables-save -c`, in Ruleset.save_text's canonical form."""
    parts = []
    ours = our_lines(saved)
    for table in TABLES:
        lines = ours.get(table)
        if lines:
            decls = [x[1:].split()[0] for x in lines if x.startswith(":")]
            hooks = [x for x in lines if x.startswith("-A") and x.split()[1] not in OUR_CHAINS]
            rules = [x for x in lines if x.startswith("-A") and x.split()[1] in OUR_CHAINS]
            parts += [f"*{table}", *canonical_lines(decls, hooks, rules), "COMMIT"]
    return "\n".join(parts) + "\n" if parts else ""


def rule_counters(saved: str, family: int) -> dict[tuple[int, str], tuple[int, int]]:
    out = {}
    for raw in saved.splitlines():
        match = _COUNTED.match(raw)
        if match and match.group(3).split()[1] in OUR_CHAINS:
            out[(family, match.group(3))] = (int(match.group(1)), int(match.group(2)))
    return out


def table_is_empty(saved: str, table: str) -> bool:
    lines, inside = [], False
    for line in saved.splitlines():
        if line.startswith("*"):
            inside = line == f"*{table}"
        elif inside and line != "COMMIT" and not line.startswith("#"):
            lines.append(line)
    if not inside and not lines:
        return False  # table absent: nothing to delete
    return all(x.startswith(":") and " ACCEPT " in x for x in lines)


def restore_entry(entry: str) -> str:
    """A set entry as `ipset restore` reads it fastest: TCP (ipset's default protocol) without
    its name, which spares ipset a getprotobyname() (an open of /etc/protocols) per entry;
    `ipset save` prints it back as "NET,tcp:PORT", the form Ruleset.sets hold."""
    net, sep, rest = entry.partition(",tcp:")
    return f"{net},{rest}" if sep else entry


def restore_entries(lines: str) -> str:
    """restore_entry over a whole `add` document at once (one C-level replace): ",tcp:" occurs
    in a set entry only between its network and its port."""
    return lines.replace(",tcp:", ",")


def set_names(saved: str) -> set[str]:
    """Every set's name in `ipset save` output, ours or not (staging copies included)."""
    return {line.split(" ", 2)[1] for line in saved.splitlines() if line.startswith("create ")}


def parse_sets(saved: str) -> tuple[list[IpSet], dict[tuple[str, str], tuple[int, int]]]:
    """Our sets (OUR_SETS order) and their per-entry counters from `ipset save` output; other
    sets in the text are ignored. One regex pass: no Python object per line but the entry."""
    entries: dict[str, list[str]] = {}
    for line in saved.splitlines():
        if line.startswith("create "):
            name = line.split(" ", 2)[1]
            if name in OUR_SET_FAMILY:
                entries[name] = []
    counters = {}
    for name, entry, packets, nbytes in _SET_ENTRY.findall(saved):
        if name in entries:
            entries[name].append(entry)
            if packets:
                counters[(name, entry)] = (int(packets), int(nbytes))
    return our_sets(entries), counters
