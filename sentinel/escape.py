"""Make untrusted text safe to print: control characters escaped, never passed on.

Guard reports (process names, stack frames, host names) come from the app's own process and may
hold terminal escapes (`\\x1b[2J`), newlines that forge log or table lines, NULs, or bidi
overrides. `escape_controls` turns every such character into a visible `\\xHH` / `\\uHHHH`
escape (and a backslash into `\\\\`, so an escape cannot be faked), the way the DNS layer writes
hostile label bytes as `\\DDD`. Printable text, including non-ASCII letters, is unchanged.
"""

from __future__ import annotations

import re
from typing import Any

# C0, DEL, C1, zero-width and bidi controls, line/paragraph separators, BOM; and the backslash
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control/format character escaped (fast when there is none)."""
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(_escape, text)


def escape_obj(obj: Any, depth: int = 0) -> Any:
    """Every string inside lists/dicts escaped (keys too); other values as they are."""
    if isinstance(obj, str):
        return escape_controls(obj)
    if depth > 16:
        return obj
    if isinstance(obj, dict):
        return {
            escape_controls(k) if isinstance(k, str) else k: escape_obj(v, depth + 1)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [escape_obj(v, depth + 1) for v in obj]
    return obj
