"""Who sent a guard datagram, as far as the kernel vouches for it.

`SO_PASSCRED` makes the kernel attach the sender's pid, uid and gid (SCM_CREDENTIALS) to every
datagram; an unprivileged sender cannot forge them. The pid is translated into the receiver's
PID namespace, and is 0 when the sender lives in a PID namespace the receiver cannot see
(compose or k8s without a shared PID namespace). Then only the uid is known, and the pid and
exe in the message are *claims*: stored as such, marked `verified: false`, never used to key
coverage or alert caps on their own.

A verified sender's identity is its pid plus its start time (`/proc/PID/stat` field 22), so a
recycled pid is a new process; its exe is read from `/proc/PID/exe`, not from the message.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from sentinel.escape import escape_controls

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
CREDS_SPACE = socket.CMSG_SPACE(_CREDS.size)


@dataclass(frozen=True)
class Sender:
    kernel_pid: int | None  # None: no credentials, or 0 (another PID namespace)
    uid: int | None
    gid: int | None
    start: int | None = None  # clock ticks since boot, from /proc (None: not visible)
    exe: str | None = None  # /proc/PID/exe (None: not visible)

    @property
    def verified(self) -> bool:
        return bool(self.kernel_pid)

    def key(self, claimed_pid: int | None) -> str:
        """The identity heartbeat gaps and alert caps are computed per."""
        if self.verified:
            return f"pid:{self.kernel_pid}:{self.start}" if self.start else f"pid:{self.kernel_pid}"
        # the uid is still the kernel's; the pid is only claimed
        return f"unverified:uid:{self.uid}:claimed-pid:{claimed_pid}"

    def detail(self, claimed_pid: int | None, claimed_exe: str | None) -> dict[str, Any]:
        """What an event records about its sender: the kernel's view and the claims."""
        out: dict[str, Any] = {
            "verified": self.verified,
            "identity": self.key(claimed_pid),
            "kernel_pid": self.kernel_pid or 0,
            "uid": self.uid,
        }
        if self.exe is not None:
            out["kernel_exe"] = self.exe
        if claimed_pid is not None and claimed_pid != self.kernel_pid:
            out["claimed_pid"] = claimed_pid
        if claimed_exe is not None and claimed_exe != self.exe:
            out["claimed_exe"] = claimed_exe
        return out


def credentials(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            if len(payload) >= _CREDS.size:
                return _CREDS.unpack(payload[: _CREDS.size])
    return None


class Identities:
    """Resolves kernel credentials to a `Sender`, with a small cache per (pid, start)."""

    def __init__(self, proc: str = "/proc", max_cached: int = 4096) -> None:
        self.proc = proc
        self.max_cached = max_cached
        self._exe: dict[tuple[int, int | None], str | None] = {}

    def sender(self, ancillary: list[tuple[int, int, bytes]]) -> Sender:
        creds = credentials(ancillary)
        if creds is None:
            return Sender(None, None, None)
        pid, uid, gid = creds
        if pid <= 0:
            return Sender(None, uid, gid)
        start = self._start_time(pid)
        key = (pid, start)
        if key not in self._exe:
            if len(self._exe) >= self.max_cached:
                self._exe.clear()
            self._exe[key] = self._read_exe(pid) if start is not None else None
        return Sender(pid, uid, gid, start, self._exe[key])

    def _start_time(self, pid: int) -> int | None:
        try:
            with open(f"{self.proc}/{pid}/stat", "rb") as f:
                raw = f.read(2048)
        except OSError:
            return None
        # the command name (field 2) may hold spaces and parentheses: split after the last ")"
        fields = raw[raw.rfind(b")") + 2 :].split()
        try:
            return int(fields[19])  # field 22 overall
        except (IndexError, ValueError):
            return None

    def _read_exe(self, pid: int) -> str | None:
        try:
            return escape_controls(os.readlink(f"{self.proc}/{pid}/exe"))
        except OSError:
            return None
