"""A demanding user's bad input and read-only expectations, through the real commands in a
namespace of the test's own: a clear message naming the option, exit 2, never a traceback;
evidence commands leave the state directory byte-identical."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import start

pytestmark = pytest.mark.netns


def tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sentinel(topo, *args: str):
    return topo.sentinel(*args, env={"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]})


# times no clock can show: a huge duration ago, NaN, infinities, epochs past year 9999
OUT_OF_RANGE = [
    ("--last", "99999999999999999999d"),
    ("--since", "99999999999999999999d"),
    ("--since", "nan"),
    ("--since", "inf"),
    ("--since", "-inf"),
    ("--since", "-1e20"),
    ("--until", "1e20"),
    ("--until", "nan"),
]


def test_report_and_suggest_refuse_times_out_of_range_naming_the_option(topo):
    for command in (["report"], ["policy", "suggest"]):
        for option, value in OUT_OF_RANGE:
            args = [option, value] if option != "--until" else ["--since", "5m", option, value]
            out = sentinel(topo, *command, *args)
            where = f"{' '.join(command)} {' '.join(args)}: {out.stderr}"
            assert out.returncode == 2, where
            assert "Traceback" not in out.stderr and "Error:" not in out.stderr, where
            assert f"{option}: {value!r}" in out.stderr, where


def test_explain_leaves_the_state_directory_byte_identical(topo, tmp_path):
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    s = start(topo, tmp_path)
    s.wait_event("pin_changed", dst_name="postgres")
    assert s.stop() == 0
    assert not (state / "events.db-wal").exists()  # the writer closed cleanly
    before = tree_hash(state)
    for dest in ("postgres:5432", "api.openai.com:443", "198.18.5.5:443/udp"):
        out = sentinel(topo, "explain", dest)
        assert out.returncode in (0, 1), out.stderr
    assert "TTL" in sentinel(topo, "explain", "postgres:5432").stdout  # it read the store
    assert tree_hash(state) == before  # no -wal/-shm left behind
