"""The policy watcher without root: in-place writes, editor renames, ConfigMap symlink swaps."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sentinel.policy.watch import PolicyWatcher


class Calls:
    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    def wait(self, timeout: float = 5.0) -> bool:
        ok = self.event.wait(timeout)
        self.event.clear()
        return ok


@pytest.fixture
def watched(tmp_path):
    def make(path: Path) -> tuple[PolicyWatcher, Calls]:
        calls = Calls()
        watcher = PolicyWatcher(path, calls, poll=30)  # the poll must not be what sees changes
        watcher.start()
        started.append(watcher)
        return watcher, calls

    started: list[PolicyWatcher] = []
    yield make
    for w in started:
        w.stop()


def test_in_place_write_and_editor_rename(tmp_path, watched):
    policy = tmp_path / "policy.yaml"
    policy.write_text("a")
    _, calls = watched(policy)
    policy.write_text("b")
    assert calls.wait()
    tmp = tmp_path / ".policy.yaml.swp"
    tmp.write_text("c")
    os.replace(tmp, policy)
    assert calls.wait()
    assert calls.count == 2


def test_same_content_and_vanished_file_are_not_changes(tmp_path, watched):
    policy = tmp_path / "policy.yaml"
    policy.write_text("a")
    _, calls = watched(policy)
    policy.write_text("a")
    os.utime(policy)
    policy.unlink()
    assert not calls.wait(1.0)
    policy.write_text("new")
    assert calls.wait()


def test_kubernetes_configmap_symlink_swap(tmp_path, watched):
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "policy.yaml").write_text("v1")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "policy.yaml").symlink_to("..data/policy.yaml")
    _, calls = watched(tmp_path / "policy.yaml")
    for version in ("..v2", "..v3"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "policy.yaml").write_text(version)
        (tmp_path / "..data_tmp").symlink_to(version)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert calls.wait(), version
    time.sleep(0.3)
    assert calls.count == 2  # one reload per swap, however many events it caused
