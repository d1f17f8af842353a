"""write_atomic: the file appears whole or not at all, private unless a mode is given, and no
temporary file outlives a failure (its temp file is made as tempfile.mkstemp makes one)."""

from __future__ import annotations

import os
import stat

import pytest

from sentinel.atomic import write_atomic, write_json_atomic


def test_a_new_file_is_private_and_whole(tmp_path):
    path = write_atomic(tmp_path / "sub" / "a.json", "hello")
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path / "sub") == ["a.json"]  # no temp file left


def test_a_mode_is_applied_and_the_old_file_replaced(tmp_path):
    target = tmp_path / "b.json"
    target.write_text("old")
    write_json_atomic(target, {"k": 1}, mode=0o644)
    assert target.read_text() == '{\n "k": 1\n}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "c.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # type: ignore[arg-type]  # neither str nor bytes
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["c.json"]


def test_the_temp_file_never_follows_a_planted_symlink(tmp_path, monkeypatch):
    """O_EXCL | O_NOFOLLOW: a name that exists (here a symlink to a victim) is skipped."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    names = iter([b"\x00" * 8, b"\x01" * 8])
    monkeypatch.setattr(os, "urandom", lambda n: next(names))
    (tmp_path / f".d.json.{'00' * 8}").symlink_to(victim)
    write_atomic(tmp_path / "d.json", "new")
    assert victim.read_text() == "keep" and (tmp_path / "d.json").read_text() == "new"


def test_the_temp_file_is_made_in_tmp_dir_when_one_is_given(tmp_path, monkeypatch):
    """A watched directory (dnsmasq's --hostsdir reads every file that appears in it) sees
    only the finished file: the temp file is made in `tmp_dir` and renamed from there."""
    watched, aside = tmp_path / "hosts.d", tmp_path / "aside"
    watched.mkdir()
    aside.mkdir()
    renamed = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(src), real(src, dst)))
    write_atomic(watched / "records", "198.18.0.2 postgres\n", 0o644, tmp_dir=aside)
    assert [os.path.dirname(src) for src in renamed] == [str(aside)]
    assert os.listdir(watched) == ["records"] and os.listdir(aside) == []
    assert (watched / "records").read_text() == "198.18.0.2 postgres\n"
    assert stat.S_IMODE((watched / "records").stat().st_mode) == 0o644
