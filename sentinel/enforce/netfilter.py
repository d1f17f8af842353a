"""Apply a Ruleset to the kernel; read back what the kernel has (the iptables and ipset runs).

Backend: `iptables-restore --noflush` documents (one atomic commit per table and family) plus
`ipset restore` with a swap. python-iptables was the first choice, but building an NFLOG target
with it corrupts the heap (segfault on the next rule, iptables 1.8.9); see docs/netfilter.md.
The default backend is the nf_tables one that Debian's `iptables-save` shows, so an auditor's
own tools see exactly the rules sentinel reports. The documents and the parsing of the dumps
are pure text (savetext.py); every tool run goes through `_run` here. Our sets are read back
from the kernel's own netlink dump (ipsetdump.py), or by `ipset save` when it declines.
"""

from __future__ import annotations

import time
from dataclasses import replace

from sentinel.enforce import ipsetdump, ipsetload, kernelread
from sentinel.enforce.kernelstate import BACKENDS, DEFAULT_BACKEND  # noqa: F401 - re-exported
from sentinel.enforce.netdev import NETDEV_TABLE, apply_netdev, read_netdev
from sentinel.enforce.render import OUR_SETS, IpSet, Ruleset  # noqa: F401 - IpSet re-exported
from sentinel.enforce.rootns import ensure_not_root_netns, in_root_netns  # noqa: F401
from sentinel.enforce.savetext import (  # noqa: F401 - OUR_CHAINS, KernelState: re-exported
    OUR_CHAINS,
    TABLES,
    KernelState,
    family_text,
    parse_sets,
    restore_doc,
    restore_entries,
    restore_entry,
    restore_previous,
    rule_counters,
    set_names,
    table_is_empty,
    teardown_doc,
)
from sentinel.errors import SentinelError

# the words run/applying.py's callers also use when a read back differs (one message, one test)
NOT_HELD = "applied, but the kernel does not hold the expected ruleset"


_run = kernelread.run  # every tool run of an apply; tests replace it here


def apply(ruleset: Ruleset, backend: str = DEFAULT_BACKEND) -> KernelState:
    """Make the kernel hold exactly `ruleset`. Either everything changes or nothing does: the
    kernel is read back before the old set contents are let go, and a read that differs from
    `ruleset` (rules text or set entries) rolls everything back and raises.

    When the kernel already holds these exact rules (a restart, a re-apply, a reload that only
    changed the allowlist) only the set entries are brought in line: the rules, and with them
    the NFLOG packet counters that account for attempts made while no sentinel was watching,
    are left alone. `rules_replaced` on the result says which path was taken."""
    ensure_not_root_netns()
    current = read_state(backend, set_counters=False)
    if not _same_rules(current, ruleset):
        return _apply_all(ruleset, backend, current)
    held = replace(ruleset, sets=tuple(current.sets))
    try:
        update_sets(held, ruleset)
        state = read_state(backend, set_counters=False)
        if state.sha256() == ruleset.sha256():
            state.rules_replaced = False
            return state
    except SentinelError:  # e.g. a set too small for the new entries: rebuild it all
        pass
    return _apply_all_after_update(ruleset, backend, held)


def _apply_all_after_update(ruleset: Ruleset, backend: str, held: Ruleset) -> KernelState:
    """The sets-only path did not land (refused part-way, or the kernel changed under us):
    its adds and deletes are undone first, so a full path that fails too rolls back to the
    entries held before this apply began, never to a half update."""
    try:
        update_sets(ruleset, held)  # -exist: what is already back in place is a no-op
    except SentinelError as undo:
        try:
            return _apply_all(ruleset, backend, read_state(backend, set_counters=False))
        except SentinelError as exc:
            raise SentinelError(
                f"{exc.message}; and undoing the refused set update failed first "
                f"({undo.message}): the sets may hold part of the new entries"
            ) from None
    return _apply_all(ruleset, backend, read_state(backend, set_counters=False))


def _same_rules(current: KernelState, ruleset: Ruleset) -> bool:
    names = {s.name for s in ruleset.sets}
    return (
        {s.name for s in current.sets} == names
        and all(current.text.get(f) == ruleset.save_text(f) for f in (4, 6))
        and current.netdev == ruleset.netdev
    )


def _apply_all(ruleset: Ruleset, backend: str, current: KernelState) -> KernelState:
    """`current`: read_state just before; its dumps are what a rollback restores."""
    tools, before, netdev_before = BACKENDS[backend], current.dumps, current.netdev
    apply_netdev(ruleset.netdev, netdev_before)  # first: a kernel without it changes nothing
    try:
        created = _stage_sets(ruleset, current.set_names)
    except SentinelError:
        apply_netdev(netdev_before, ruleset.netdev)
        raise
    done: list[int] = []
    # the new rules' NFLOG counters start at 0 from here on: what they count, the monitor
    # reads (and stamps) later than this (applied_at, the report's `unaccounted_packets`)
    reset_at = time.time()
    try:
        for family in (4, 6):
            _run(
                [f"{tools[family]}-restore", "--noflush", "--wait"],
                restore_doc(ruleset, family, before[family]),
            )
            done.append(family)
        state = read_state(backend, set_counters=False)  # exactly the ruleset, or all goes back
        if state.sha256() != ruleset.sha256():
            raise SentinelError(NOT_HELD)
    except SentinelError:
        _rollback(ruleset, tools, before, done, created)
        apply_netdev(netdev_before, ruleset.netdev)
        raise
    state.rules_reset_at = reset_at
    staging = [_staging(s.name) for s in ruleset.sets]
    _destroy(staging)
    state.set_names.difference_update(staging)
    state.created_tables = [
        f"{family}/{table}"
        for family in (4, 6)
        for table in ruleset.tables(family)
        if f"*{table}" not in before[family].splitlines()
    ]
    return state


def _destroy(names: list[str]) -> None:
    session = _netlink_session()
    if session is None:
        _run(["ipset", "restore"], "".join(f"destroy {name}\n" for name in names))
        return
    with session:
        for name in names:
            session.destroy(name)


def _staging(name: str) -> str:
    return f"{name}-new"


def _stage_sets(ruleset: Ruleset, existing: set[str]) -> list[str]:
    """Fill a staging copy of each set, then swap them all in (atomic per set; a refused
    entry leaves every live set as it was). `existing`: every set's name now. Returns the
    live sets this created (a rollback removes them again).

    The entries go to the kernel as netlink messages (ipsetload: no getaddrinfo() per entry)
    unless that is unavailable or an entry is not in its form: then `ipset restore` reads them."""
    fills = _fills(ruleset)
    lines = []
    for s in ruleset.sets:
        stage = _staging(s.name)
        if stage in existing:  # left over by an apply that was killed
            lines.append(f"destroy {stage}")
        if s.name not in existing:
            lines.append(s.create_line())
        lines.append(s.create_line(stage) + _hashsize(len(s.entries)))
        if fills is None and s.entries:  # one line per entry, each through restore_entry's rewrite
            add = f"add {stage} "
            lines.append(restore_entries(add + f"\n{add}".join(s.entries)))
    created = [s.name for s in ruleset.sets if s.name not in existing]
    if fills is None:
        lines += [f"swap {_staging(s.name)} {s.name}" for s in ruleset.sets]
        _run(["ipset", "restore"], "\n".join(lines) + "\n")
        return created
    session, requests = fills
    swapped: list[str] = []
    with session:
        _run(["ipset", "restore"], "\n".join(lines) + "\n")
        try:
            for s, adds in zip(ruleset.sets, requests, strict=True):
                session.add(_staging(s.name), s.family, adds)
            for s in ruleset.sets:
                session.swap(_staging(s.name), s.name)
                swapped.append(s.name)
        except SentinelError as exc:
            try:  # the old contents back first
                _put_back(session, swapped, [s.name for s in ruleset.sets], created)
            except SentinelError as failed:
                raise SentinelError(f"{exc.message}; undoing it failed: {failed.message}") from None
            raise
    return created


def _put_back(
    session: ipsetload.Session | None, swapped: list[str], staged: list[str], created: list[str]
) -> None:
    """Swap the old contents back into `swapped`, destroy the staging copies of `staged` and
    the live sets in `created`: through netlink (a swap or destroy a reader's dump holds up is
    tried again, ipsetload.BUSY_WAIT), else `ipset restore`."""
    if session is None:
        undo = [f"swap {_staging(n)} {n}" for n in swapped]
        undo += [f"destroy {_staging(n)}" for n in staged] + [f"destroy {n}" for n in created]
        _run(["ipset", "restore"], "\n".join(undo) + "\n")
        return
    for name in swapped:
        session.swap(_staging(name), name)
    for name in [*map(_staging, staged), *created]:
        session.destroy(name)


def _hashsize(entries: int) -> str:
    """A staging copy sized for its entries up front (about 4 a bucket): the kernel's default
    1,024 buckets are rehashed three times on the way to 20,000 entries. Small sets: as before."""
    size = 1024
    while size * 4 < entries:
        size *= 2
    return f" hashsize {size}" if size > 1024 else ""


def _fills(ruleset: Ruleset) -> tuple[ipsetload.Session, list[list[bytes]]] | None:
    """A netlink session and every set's ADD requests, or None: `ipset restore` fills them."""
    requests = []
    for s in ruleset.sets:
        encoded = ipsetload.encode(_staging(s.name), s.family, s.entries)
        if encoded is None:
            return None
        requests.append(encoded)
    session = _netlink_session()
    return None if session is None else (session, requests)


_netlink_session = ipsetload.Session.open  # tests of the text path (test_netfilter_text) replace it


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
        doc = restore_previous(before[family], _save(tools[family]))
        _run([f"{tools[family]}-restore", "--noflush", "--wait"], doc)
    names = [s.name for s in ruleset.sets]
    session = _netlink_session()
    if session is None:
        _put_back(None, names, names, created)
        return
    with session:
        _put_back(session, names, names, created)


def _save(tool: str, counters: bool = False) -> str:
    return _run([f"{tool}-save", *(["-c"] if counters else [])])


def read_state(backend: str = DEFAULT_BACKEND, set_counters: bool = True) -> KernelState:
    """kernelread.read_state through this module's `_run`, `_read_sets_netlink` and
    `read_netdev` (looked up per call: what tests replace here is what an apply reads with)."""
    return kernelread.read_state(
        backend,
        set_counters,
        runner=_run,
        read_sets_netlink=_read_sets_netlink,
        read_netdev=read_netdev,
    )


_read_sets_netlink = ipsetdump.read  # tests of the text path (test_netfilter_text) replace it


def teardown(backend: str | None = None, created_tables: list[str] | None = None) -> bool:
    """Remove only our chains, jumps and sets, and the tables our apply created if they are
    empty again. Returns whether anything of ours was there."""
    ensure_not_root_netns()
    found = False
    for name in [backend] if backend else list(BACKENDS):
        for family, tool in BACKENDS[name].items():
            doc = teardown_doc(_save(tool))
            if doc:
                _run([f"{tool}-restore", "--noflush", "--wait"], doc)
                found = True
            if name == "nft":
                _drop_empty_tables(tool, family, created_tables or [])
    names = set(_run(["ipset", "list", "-n"]).split())
    ours = [n for _f, s in OUR_SETS for n in (s, _staging(s)) if n in names]
    if ours:
        _destroy(ours)  # a set a reader is dumping is waited for (ipsetload.BUSY_WAIT)
    netdev = read_netdev()[0]
    if netdev:
        _run(["nft", "delete", "table", "netdev", NETDEV_TABLE])
    return found or bool(ours) or bool(netdev)


def _drop_empty_tables(tool: str, family: int, created: list[str]) -> None:
    """A table that only exists because we applied is deleted once nothing is left in it."""
    saved = _save(tool)
    for table in TABLES:
        if f"{family}/{table}" in created and table_is_empty(saved, table):
            _run(["nft", "delete", "table", "ip" if family == 4 else "ip6", table])


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
        adds += [f"add {s.name} {restore_entry(e)}" for e in sorted(set(s.entries) - current)]
        dels += [f"del {s.name} {restore_entry(e)}" for e in sorted(current - set(s.entries))]
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
        "ipset-save.txt": "".join(output(["ipset", "save", name]) for _f, name in OUR_SETS),
        "nft-netdev.txt": output(["nft", "list", "table", "netdev", NETDEV_TABLE]),
    }
