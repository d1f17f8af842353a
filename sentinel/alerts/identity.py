"""Which process an alert names and caps by, and what it says about guard reports.

Guard reports come from inside the app's process: their `exe`, `pid`, destination and stack
are claims. The receiver records the kernel's view in `detail.sender` (SCM_CREDENTIALS pid,
/proc exe, `verified`); alerts name and cap by that, never by the claims.
"""

from __future__ import annotations

from typing import Any

from sentinel.store.events import Event


def process_of(event: Event) -> str:
    """The process an alert names and is capped by: for guard reports, only what the kernel
    vouches for (SCM_CREDENTIALS pid, /proc exe); a claimed exe never makes a new process."""
    sender = event.detail.get("sender") if event.layer == "guard" else None
    if isinstance(sender, dict):
        if not sender.get("verified"):
            return f"unverified guard sender (uid {sender.get('uid')})"
        exe = sender.get("kernel_exe")
        return f"{exe} (pid {event.pid})" if exe else f"pid {event.pid}"
    if event.exe:
        return event.exe
    return f"pid {event.pid}" if event.pid else "unknown process"


def guard_marks(event: Event) -> dict[str, Any]:
    """What an alert says about a guard report the kernel layer cannot corroborate."""
    sender = event.detail.get("sender") if isinstance(event.detail.get("sender"), dict) else {}
    verified = bool(sender.get("verified"))
    if event.verdict == "blocked":
        seen = "(guard report: refused in the process, no packet, not seen by the kernel"
    else:
        seen = "(guard report: destination and stack as claimed by the process"
    who = "" if verified else "; sender identity NOT verified by the kernel"
    return {
        "corroborated": False,
        "sender_verified": verified,
        "claimed_exe": sender.get("claimed_exe"),
        "claimed_pid": sender.get("claimed_pid"),
        "corroboration": seen + who + ")",
    }
