"""Atomic file writes: a temp file in the same directory, then a rename, so a reader sees the
old file or the new one, never half of either. The temp file is made as `tempfile.mkstemp`
makes it (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0o600, a random name) without importing tempfile,
which pulls shutil, random, bz2 and lzma into every `sentinel apply` (~5 ms of start-up)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(
    path: str | Path, data: str | bytes, mode: int | None = None, tmp_dir: Path | None = None
) -> Path:
    """Write `data` to `path` atomically; `mode` (e.g. 0o644) where others must read it
    (mkstemp's 0o600 otherwise). Parents are created; the temp file never outlives a failure.
    `tmp_dir` (same filesystem): where the temp file is made when a watcher of `path`'s
    directory must not see it (dnsmasq reads every file that appears in a --hostsdir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(tmp_dir or path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _mkstemp(directory: Path, prefix: str) -> tuple[int, str]:
    for _ in range(100):  # a random 64-bit name: a clash is a leftover, or an attack
        name = os.path.join(directory, prefix + os.urandom(8).hex())
        try:
            return os.open(name, _FLAGS, 0o600), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def write_json_atomic(
    path: str | Path, obj: Any, indent: int = 1, mode: int | None = None, newline: bool = False
) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=True) + ("\n" if newline else "")
    return write_atomic(path, text, mode)
