"""`sentinel guard path --compile`: the guard's bytecode is made before the app starts, a guarded
start from a read-only copy loads it (no compile), and nothing is written into that folder."""

from __future__ import annotations

import marshal
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from sentinel.guard import guard_path
from sentinel.guard.bytecode import compile_guard
from sentinel.lab.netns import PYTHON

SENTINEL = str(Path(PYTHON).with_name("sentinel"))


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def guarded_start(folder: Path, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {
        **extra,
        **{k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")},
        "PYTHONPATH": str(folder),
        "SENTINEL_GUARD": "audit",
        "SENTINEL_STATE_DIR": str(tmp_path / "state"),
    }
    return subprocess.run(
        [sys.executable, "-v", "-c", "import sentinel_guard; print(sentinel_guard.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_compiled_read_only_guard_loads_bytecode_and_writes_nothing(tmp_path):
    folder = tmp_path / "guard"
    shutil.copytree(guard_path(), folder, ignore=shutil.ignore_patterns("__pycache__"))
    made = compile_guard(folder)
    assert {p.name.split(".")[0] for p in made} >= {"sentinel_guard", "sitecustomize"}
    for path in [folder, *folder.rglob("*")]:  # as a read-only bind mount would be
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = tree(folder)
    try:
        out = guarded_start(folder, tmp_path)
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert out.stdout.strip() == str(folder / "sentinel_guard.py")
    for name in ("sentinel_guard", "sitecustomize"):
        pyc = folder / "__pycache__" / Path(made[0]).name.replace("__init__", name)
        assert f"# code object from '{pyc}'" in out.stderr, out.stderr[-3000:]
    assert tree(folder) == before  # the app wrote nothing into the guard's folder


def test_without_bytecode_every_start_compiles_the_guard(tmp_path):
    folder = tmp_path / "guard"
    shutil.copytree(guard_path(), folder, ignore=shutil.ignore_patterns("__pycache__"))
    # a tree the app cannot write (root ignores modes, so say it the way Python understands)
    out = guarded_start(folder, tmp_path, PYTHONDONTWRITEBYTECODE="1")
    assert f"# code object from {folder / 'sentinel_guard.py'}" in out.stderr
    assert not (folder / "__pycache__").exists()


def test_cli_compile_prints_the_path_and_reports_the_bytecode():
    out = subprocess.run(
        [SENTINEL, "guard", "path", "--compile"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(guard_path())  # PYTHONPATH=$(sentinel guard path --compile)
    assert "sentinel_guard.cpython-" in out.stderr
    bad = subprocess.run(
        [SENTINEL, "guard", "path", "--compile", "--python", "/nonexistent/python"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "cannot run /nonexistent/python" in bad.stderr  # bad input


def test_compile_replaces_older_bytecode_with_one_without_column_tables(tmp_path):
    """pip (or an earlier compileall) may have written bytecode already; --compile rewrites it
    without column tables (a smaller file to read at every guarded start)."""
    folder = tmp_path / "guard"
    shutil.copytree(guard_path(), folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(folder)], check=True)
    pyc = next((folder / "__pycache__").glob("sentinel_guard.*.pyc"))

    def columns(path: Path) -> set:
        code = marshal.loads(path.read_bytes()[16:])
        found, todo = set(), [code]
        while todo:
            co = todo.pop()
            found.update(col for _, _, col, _ in co.co_positions())
            todo.extend(c for c in co.co_consts if hasattr(c, "co_positions"))
        return found

    assert columns(pyc) - {None}  # plain compileall: column tables
    before = pyc.stat().st_size
    compile_guard(folder)
    assert columns(pyc) == {None} and pyc.stat().st_size < before
    out = guarded_start(folder, tmp_path, PYTHONDONTWRITEBYTECODE="1")
    assert f"# code object from '{pyc}'" in out.stderr  # and Python uses it
