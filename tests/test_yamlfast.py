"""Folded one-line items read exactly as libyaml reads them: same data, same lines, same errors."""

from __future__ import annotations

import ipaddress
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.policy import yamlfast, yamlsrc
from sentinel.policy.yamlsrc import YamlSyntaxError, load_located

SCALARS = [
    "e1",
    "yes",
    "No",
    "on",
    "OFF",
    "null",
    "Null",
    "true",
    "0",
    "007",
    "0x1BB",
    "0o17",
    "1_000",
    "-5",
    "+3",
    "1.5",
    "1e3",
    "6.02e+23",
    "2001-12-14",
    "2001-13-45",
    "12:30",
    "190:20:30",
    "198.18.0.0/15",
    "a.b-c_d/e",
    "_x",
    "tcp",
    "'single'",
    "''",
    '"double"',
    '""',
    '"a: b, c"',
    "'# not a comment'",
    '"[x]"',
    "'{y}'",
    "~",
    "y",
    "n",
    "NaN",
    ".inf",
    "1.2.3",
]
KEYS = ["name", "cidr", "host", "ports", "protocol", "yes", "on", "null", "x1", "Name"]


def item(pairs):
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


pair = st.tuples(st.sampled_from(KEYS), st.sampled_from(SCALARS))
list_value = st.lists(st.sampled_from(SCALARS), max_size=3).map(lambda v: "[" + ", ".join(v) + "]")
value_pair = st.one_of(pair, st.tuples(st.sampled_from(KEYS), list_value))
entry = st.lists(value_pair, min_size=1, max_size=4).map(item)


@st.composite
def documents(draw):
    """Runs of one-line items amid the constructs that could fool a line-based reader."""
    out = ["version: 1"]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["seq", "seq", "block", "plain", "nested", "comment", "bad"]))
        items = draw(st.lists(entry, min_size=yamlfast.MIN_RUN, max_size=12))
        key = f"k{len(out)}"
        if kind == "seq":
            out += [f"{key}:"] + [f"  - {e}" for e in items]
        elif kind == "block":  # the same lines as the text of a block scalar
            out += [f"{key}: |"] + [f"  - {e}" for e in items]
        elif kind == "plain":  # as the continuation of a multi-line plain scalar
            out += [f"{key}: text"] + [f"  - {e}" for e in items]
        elif kind == "nested":
            out += [f"{key}:", "  - inner:"] + [f"    - {e}" for e in items]
        elif kind == "comment":
            out += [f"{key}:"] + [f"  - {e}  # note" for e in items]
        else:  # mixed indentation: not one sequence
            out += [f"{key}:"] + [f"  - {e}" if i % 3 else f"   - {e}" for i, e in enumerate(items)]
    return "\n".join(out) + "\n"


def slow(text):
    """The reference: the full libyaml parse of the original text, nothing folded."""
    return yamlsrc._load(text, {})


def outcome(fn, text):
    try:
        doc = fn(text)
    except YamlSyntaxError as exc:
        return ("error", exc.line, exc.message), None
    return ("ok", doc.data), doc


@settings(max_examples=150, deadline=None)
@given(documents())
def test_same_data_lines_and_errors_as_the_full_parse(text):
    fast, fast_doc = outcome(load_located, text)
    ref, ref_doc = outcome(slow, text)
    assert fast == ref
    if ref_doc is not None:
        assert fast == ("ok", yaml.safe_load(text))
        for path in ref_doc.lines:
            assert fast_doc.line(path) == ref_doc.line(path), path


def big_policy(n=10_000):
    base = int(ipaddress.ip_address("198.19.0.0"))
    rows = [
        f"  - {{name: e{i}, cidr: {ipaddress.ip_network((base + 4 * i, 30))}, ports: [443, 8443]}}"
        for i in range(n)
    ]
    return "version: 1\nallow:\n" + "\n".join(rows) + "\ndns: {min_ttl: 30s}\n"


def test_a_big_allowlist_is_folded_and_reads_the_same():
    text = big_policy()
    folded = yamlfast.fold(text, yamlsrc._fold_scalar)
    assert folded is not None and sum(len(r.entries) for r in folded.runs.values()) == 10_000
    assert folded.text.count("\n") == text.count("\n")  # every line number stays
    doc = load_located(text)
    assert doc.data == yaml.safe_load(text)
    assert doc.line("allow[9999].cidr") == 10_002 and doc.line("dns.min_ttl") == 10_003


@pytest.mark.parametrize(
    "line",
    [
        "  - {name: a, name: b, c: d, e: f}",  # duplicate key: the full parse words it
        "  - {name: 2001-13-45, a: b}",  # a timestamp that is no date
    ],
)
def test_lines_that_cannot_be_read_fall_back_to_the_full_parse(line):
    good = "  - {name: x, ports: [1]}"
    text = "allow:\n" + "\n".join([good] * 9 + [line]) + "\n"
    assert outcome(load_located, text)[0] == outcome(slow, text)[0]
    assert outcome(slow, text)[0][0] == "error"


plain = st.sampled_from([s for s in SCALARS if re.fullmatch(yamlfast._PLAIN, s)])
gap = st.sampled_from(["", " ", "  "])


@st.composite
def shaped_items(draw):
    """`{name, cidr, ports[, protocol]}` lines: the shape yamlfast reads with one match."""
    ports = draw(st.lists(plain, min_size=1, max_size=3))
    sep = draw(gap) + "," + draw(gap)
    text = f"name: {draw(plain)}{sep}cidr: {draw(plain)}{sep}ports: [{draw(gap)}"
    text += (draw(gap) + "," + draw(gap)).join(ports) + draw(gap) + "]"
    if draw(st.booleans()):
        text += f"{sep}protocol: {draw(plain)}"
    return "{" + draw(gap) + text + draw(gap) + "}" + draw(st.sampled_from(["", "  # c"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(shaped_items(), min_size=yamlfast.MIN_RUN, max_size=10))
def test_the_common_shape_reads_as_the_general_reading_and_libyaml(items):
    read = yamlfast._reader(yamlsrc._fold_scalar)
    for line in (f"  - {i}" for i in items):
        assert yamlfast._SHAPE.fullmatch(line) is not None, line
        general = yamlfast._ITEM.fullmatch(line)
        assert general is not None  # the shape is a sub-language of the general item
        inner = general.group(2)
        assert caught(read, line) == caught(general_reading, inner)
    text = "allow:\n" + "".join(f"  - {i}\n" for i in items)
    assert outcome(load_located, text)[0] == outcome(slow, text)[0]


def general_reading(inner):
    return "  ", yamlfast._mapping(inner, yamlsrc._fold_scalar)


def caught(fn, line):
    try:
        return fn(line)
    except yamlfast.Fallback as exc:  # e.g. 2001-13-45: both readings give up on the same token
        return ("fallback", str(exc))
