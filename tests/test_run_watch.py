"""The policy watcher without root: in-place writes, editor renames, ConfigMap symlink swaps."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from sentinel.policy.watch import PolicyWatcher
from tests.conftest import configmap_mount, configmap_update, editor_save


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
    editor_save(policy, "c")
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
    _, calls = watched(configmap_mount(tmp_path, "v1"))
    for version in ("..v2", "..v3"):
        configmap_update(tmp_path, version, version)
        assert calls.wait(), version
    time.sleep(0.3)
    assert calls.count == 2  # one reload per swap, however many events it caused
