"""One-line sequence items `- {key: value, ...}` read with a strict regex instead of libyaml.

A 10,000-entry allowlist is 10,000 such lines; composing them node by node costs most of a
second of Python objects. `fold(text)` reads every line of that exact shape (plain scalars of a
safe alphabet, quoted strings without escapes, flat lists of those) into a dict, resolving each
scalar with PyYAML's own resolver and constructors, and replaces each run of consecutive items
with one placeholder item plus blank lines, so libyaml still parses the rest of the document and
every line number stays where it was. The caller checks that every placeholder came back as a
whole plain item of a sequence (and falls back to the full parse of the original text if not,
or on any error), so a line inside a block scalar or a multi-line string is never misread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# plain: a safe alphabet; quoted: printable ASCII without escapes (no backslash, no quote)
_SCALAR = r"""[A-Za-z0-9_][A-Za-z0-9_./-]*|"[ !#-\[\]-~]*"|'[ -&(-~]*'"""
_VALUE = rf"(?:{_SCALAR})|\[ *(?:(?:{_SCALAR})(?: *, *(?:{_SCALAR}))*)? *\]"
_PAIR = rf"[A-Za-z_][A-Za-z0-9_]*: +(?:{_VALUE})"
_ITEM = re.compile(rf"( *)- \{{ *((?:{_PAIR})(?: *, *(?:{_PAIR}))*) *\}}(?: +#[^\n]*)?")
_PAIRS = re.compile(rf"([A-Za-z_][A-Za-z0-9_]*): +({_VALUE})")
_ITEMS = re.compile(_SCALAR)
# The commonest item, `{name: X, cidr: Y, ports: [P, ...][, protocol: Z]}` of plain scalars: a
# strict sub-language of _ITEM read by one match with its values in groups (no per-pair scan).
_PLAIN = r"[A-Za-z0-9_][A-Za-z0-9_./-]*"
_SHAPE = re.compile(
    rf"( *)- \{{ *name: +({_PLAIN}) *, *cidr: +({_PLAIN}) *, *ports: +\[ *"
    rf"({_PLAIN}(?: *, *{_PLAIN})*) *\](?: *, *protocol: +({_PLAIN}))? *\}}(?: +#[^\n]*)?"
)
MIN_RUN = 8  # shorter runs are not worth a placeholder

Scalar = Callable[[str], Any]  # one token as written (quotes included) -> value, or Fallback


class Fallback(Exception):
    """The fast reading does not apply: parse the original text."""


@dataclass
class Run:
    entries: list[dict[str, Any]]
    lines: list[int]  # 1-based line of each entry


@dataclass
class Folded:
    text: str
    runs: dict[str, Run]  # placeholder -> the items it stands for


def fold(text: str, scalar: Scalar) -> Folded | None:
    """None when nothing is worth folding; Fallback when a matching line cannot be read."""
    if "- {" not in text:
        return None
    lines = text.split("\n")
    token = f"sentinel_fold_{os.urandom(6).hex()}_"  # secrets.token_hex's bytes, no import
    if token in text:  # a placeholder must not already be in the text (48 random bits)
        return None
    runs: dict[str, Run] = {}
    read = _reader(scalar)
    i = 0
    while i < len(lines):
        first = read(lines[i])
        if first is None:
            i += 1
            continue
        indent, j = first[0], i
        entries, numbers = [], []
        while j < len(lines) and (item := read(lines[j])) and item[0] == indent:
            entries.append(item[1])
            numbers.append(j + 1)
            j += 1
        if len(entries) >= MIN_RUN:
            name = f"{token}{len(runs)}"
            runs[name] = Run(entries, numbers)
            lines[i:j] = [f"{indent}- {name}"] + [""] * (j - i - 1)
        i = j
    return Folded("\n".join(lines), runs) if runs else None


def _reader(scalar: Scalar) -> Callable[[str], tuple[str, dict[str, Any]] | None]:
    """line -> (indent, mapping) for a one-line item, else None (the _SHAPE match first)."""
    name, cidr, ports, protocol = (scalar(k) for k in ("name", "cidr", "ports", "protocol"))
    shape, item = _SHAPE.fullmatch, _ITEM.fullmatch

    def read(line: str) -> tuple[str, dict[str, Any]] | None:
        m = shape(line)
        if m is not None:
            indent, n, c, p, proto = m.groups()
            listed = p.replace(" ", "").split(",")  # plain scalars hold no space or comma
            out = {name: scalar(n), cidr: scalar(c), ports: [scalar(v) for v in listed]}
            if proto is not None:
                out[protocol] = scalar(proto)
            return indent, out
        m = item(line)
        return None if m is None else (m.group(1), _mapping(m.group(2), scalar))

    return read


def _mapping(inner: str, scalar: Scalar) -> dict[str, Any]:
    out: dict[Any, Any] = {}
    pairs = _PAIRS.findall(inner)
    for key, value in pairs:
        if value[0] == "[":
            out[scalar(key)] = [scalar(v) for v in _ITEMS.findall(value)]
        else:
            out[scalar(key)] = scalar(value)
    if len(out) != len(pairs):
        raise Fallback("duplicate key")
    return out
