"""Byte-compile the guard before it is mounted or copied into an app (`sentinel guard path
--compile`), so that no app start compiles it and no app ever writes into the guard's folder.

Without bytecode every guarded start compiles `sentinel_guard.py` (about 10 ms here): a
read-only bind mount (deploy/compose.yaml) or a tree the app's user cannot write has nowhere to
cache it. Compile with the app's own interpreter (`--python`): bytecode is per Python version.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sentinel.errors import BadInput, SentinelError
from sentinel.guard import PYTHONPATH_DIR


def compile_guard(folder: Path = PYTHONPATH_DIR, python: str | None = None) -> list[Path]:
    """compileall the folder with `python` (default: this interpreter); the .pyc files made."""
    exe = python or sys.executable
    try:
        done = subprocess.run(
            # -f: replace bytecode pip wrote; no_debug_ranges: no column tables (a 7% smaller
            # file to read at every start; tracebacks from the guard keep their line numbers)
            [exe, "-X", "no_debug_ranges", "-m", "compileall", "-f", "-q", str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except OSError as exc:  # no such interpreter, not executable: the --python given is bad input
        raise BadInput(f"guard path --compile: cannot run {exe}: {exc}") from None
    except subprocess.TimeoutExpired as exc:
        raise SentinelError(f"guard path --compile: cannot run {exe}: {exc}") from None
    if done.returncode != 0:
        detail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise SentinelError(f"guard path --compile: {exe} -m compileall {folder} failed: {detail}")
    return sorted((folder / "__pycache__").glob("*.pyc"))
