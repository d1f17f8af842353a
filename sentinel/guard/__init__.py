"""The in-process guard (layer 3): shipping, the compiled allowlist, and the event receiver.

`pythonpath/` is the part that runs inside the application's interpreter (standard library
only); `compile.py` and `receiver.py` run in the sentinel. Contract: docs/guard.md.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHONPATH_DIR = HERE / "pythonpath"
PTH_FILE = HERE / "sentinel_guard.pth"
RUNTIME_FILE = PYTHONPATH_DIR / "sentinel_guard.py"
ALLOWLIST_FORMAT = "sentinel-guard-allowlist/2"  # allowlist.json
GUARD_FORMAT = "sentinel-guard-allowlist/4"  # allowlist.marshal, what the guard reads
GUARD_MAGIC = GUARD_FORMAT.encode() + b"\n"  # the file's first line, then the header line
GUARD_CHECK_MOD = 1073741789  # 2**30 - 35, prime: check = int.from_bytes(payload, "little") % it


def guard_path() -> Path:
    """The directory to put on the app's PYTHONPATH (holds sitecustomize.py)."""
    return PYTHONPATH_DIR


def pth_files() -> tuple[Path, Path]:
    """The two files to copy into an app's site-packages instead: the .pth loader and the guard."""
    return PTH_FILE, RUNTIME_FILE
