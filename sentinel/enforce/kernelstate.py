"""The names of what we put into the kernel, one set of ours (IpSet), what a read of the kernel
holds (KernelState) and the one hash both sides are compared by.

Light on purpose: `sentinel status` and `report` read the kernel through kernelread.py, which
imports this and not render.py or netfilter.py (no dataclasses, inspect, typing or the apply
machinery at start-up; tests/test_entry.py checks). render.py and savetext.py re-export these
names, so every existing caller keeps its imports.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

CHAIN_OUT = "SENTINEL-OUT"
CHAIN_DENY = "SENTINEL-DENY"
CHAIN_DNS = "SENTINEL-DNS"
SET_NAME = {4: "sentinel-allow4", 6: "sentinel-allow6"}
# Addresses a DNS pin move retired from a name still allowlisted: open flows to them go on
# (established only), new ones do not. Emptied by every full apply (start, reload, mode).
HELD_SET = {4: "sentinel-held4", 6: "sentinel-held6"}
OUR_SETS = ((4, SET_NAME[4]), (6, SET_NAME[6]), (4, HELD_SET[4]), (6, HELD_SET[6]))
OUR_SET_FAMILY = {name: family for family, name in OUR_SETS}
OUR_CHAINS = (CHAIN_OUT, CHAIN_DENY, CHAIN_DNS)
TABLES = ("filter", "nat")
NETDEV_TABLE = "sentinel"  # `table netdev sentinel`: the layer AF_PACKET frames also pass
BACKENDS = {
    "nft": {4: "iptables-nft", 6: "ip6tables-nft"},
    "legacy": {4: "iptables-legacy", 6: "ip6tables-legacy"},
}
DEFAULT_BACKEND = "nft"
_SET_FIELDS = ("name", "family", "entries")
_STATE_FIELDS = (  # compared and shown; `dumps` and `set_names` are neither
    "text",
    "sets",
    "counters",
    "set_counters",
    "created_tables",
    "rules_replaced",
    "netdev",
    "netdev_counters",
)


class IpSet:
    """One of our ipsets and its entries, sorted. Immutable, compared, hashed and shown by its
    fields as the frozen dataclass it was: a plain class, so a kernel read needs no dataclasses."""

    __slots__ = _SET_FIELDS

    def __init__(self, name: str, family: int, entries: tuple[str, ...]) -> None:
        # entries: "198.18.0.2,tcp:5432", "10.20.0.0/16,tcp:443"
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "family", family)
        object.__setattr__(self, "entries", entries)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {key!r}")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"cannot delete field {key!r}")

    def _key(self) -> tuple[str, int, tuple[str, ...]]:
        return (self.name, self.family, self.entries)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"IpSet(name={self.name!r}, family={self.family!r}, entries={self.entries!r})"

    def __reduce__(self) -> tuple:
        return (IpSet, self._key())

    def create_line(self, name: str | None = None) -> str:
        inet = "inet" if self.family == 4 else "inet6"
        maxelem = max(65536, 2 * len(self.entries))
        return f"create {name or self.name} hash:net,port family {inet} maxelem {maxelem} counters"


def our_sets(entries: dict[str, list[str]]) -> list[IpSet]:
    """Our sets a kernel read found (`entries` by set name), in OUR_SETS order, entries sorted."""
    return [
        IpSet(name, family, tuple(sorted(entries[name])))
        for family, name in OUR_SETS
        if name in entries
    ]


class KernelState:
    """Our part of the kernel's tables, in the same canonical text as Ruleset.save_text.
    Compared and shown like the dataclass it was (`dumps` and `set_names` left out of both)."""

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __init__(
        self,
        text: dict[int, str] | None = None,
        sets: list[IpSet] | None = None,
        counters: dict[tuple[int, str], tuple[int, int]] | None = None,  # (family, line)
        set_counters: dict[tuple[str, str], tuple[int, int]] | None = None,
        created_tables: list[str] | None = None,  # "6/nat": absent before our apply
        rules_replaced: bool = True,  # False: the rules were already in force, only sets changed
        netdev: str = "",  # our netdev table as Ruleset.netdev renders it
        netdev_counters: dict[int, int] | None = None,  # logged frames per family
        dumps: dict[int, str] | None = None,  # the raw reads: `iptables-save -c` per family
        set_names: set[str] | None = None,  # every ipset's name (ours or not)
    ) -> None:
        self.text = {} if text is None else text
        self.sets = [] if sets is None else sets
        self.counters = {} if counters is None else counters
        self.set_counters = {} if set_counters is None else set_counters
        self.created_tables = [] if created_tables is None else created_tables
        self.rules_replaced = rules_replaced
        self.netdev = netdev
        self.netdev_counters = {} if netdev_counters is None else netdev_counters
        self.dumps = {} if dumps is None else dumps
        self.set_names = set() if set_names is None else set_names
        # when rules_replaced: the time just before the rules (and their counters) were
        # replaced, set by the apply (not compared, not shown: not kernel state)
        self.rules_reset_at: float | None = None

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _STATE_FIELDS)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in _STATE_FIELDS)
        return f"KernelState({inner})"

    @property
    def present(self) -> bool:
        return any(t.strip() for t in self.text.values()) or bool(self.sets) or bool(self.netdev)

    def sha256(self) -> str:
        return ruleset_hash(self.text.get(4, ""), self.text.get(6, ""), self.sets, self.netdev)


def canonical_lines(chains: Iterable[str], hooks: Iterable[str], rules: Iterable[str]) -> list[str]:
    """One order for expected and kernel text: chains sorted, hooks, rules grouped by chain."""
    chains = sorted(chains)
    by_chain = sorted(
        rules, key=lambda line: chains.index(line.split()[1]) if line.split()[1] in chains else -1
    )
    return [f":{c} - [0:0]" for c in chains] + list(hooks) + by_chain


def _sha256():  # a hashlib-style SHA-256 object
    """hashlib's (OpenSSL's) when something imported hashlib already (an apply: it hashes the
    policy too); else CPython's own: importing hashlib loads OpenSSL, ~6 ms of a `status` or
    `report` start-up, more than the builtin's slower hashing of a 10,000-entry ruleset
    (~+2.5 ms). The same SHA-256 either way."""
    hashlib = sys.modules.get("hashlib")
    if hashlib is not None:
        return hashlib.sha256()
    for builtin in ("_sha256", "_sha2"):  # CPython <= 3.11, >= 3.12
        try:
            return __import__(builtin).sha256()
        except ImportError:
            continue
    import hashlib

    return hashlib.sha256()


def ruleset_hash(v4_text: str, v6_text: str, sets: Iterable[IpSet], netdev: str = "") -> str:
    """Hash of what matters: rules per family, set contents (order-free), the netdev table."""
    h = _sha256()
    for part in (v4_text, "\0", v6_text, *(("\0netdev\0", netdev) if netdev else ())):
        h.update(part.encode())
    for s in sorted(sets, key=lambda s: s.name):
        h.update(f"\0{s.name}\0".encode())
        h.update("\n".join(sorted(s.entries)).encode())
    return h.hexdigest()
