"""The sentinel's end of the guard channel: a unix datagram socket that turns guard reports into
`Event`s and keeps track of which processes run a live guard (heartbeats).

Datagrams are JSON objects (see docs/guard.md). Anything else is counted as garbage and
ignored; a bad sender cannot stop the receiver. The kernel-verified sender pid (SO_PASSCRED)
wins over the pid a datagram claims.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.atomic import write_json_atomic
from sentinel.lazylog import get_logger
from sentinel.store.events import Event
from sentinel.store.state import state_dir as default_state_dir

SOCKET_NAME = "guard.sock"
PROCESSES_FILE = "guard_processes.json"
MAX_DATAGRAM = 65536
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


log = get_logger("sentinel.guard")  # structlog (and rich) only once something is logged


@dataclass
class GuardProcess:
    pid: int
    exe: str | None
    mode: str | None
    last_seen: float
    interval: float
    state: str = "running"
    fail_closed: bool = False
    policy_sha256: str | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    violations: int = 0
    dropped: int = 0

    def active(self, now: float | None = None) -> bool:
        """A guard is active while it heartbeats: three missed beats (min 3 s) and it is not."""
        now = time.time() if now is None else now
        return self.state == "running" and now - self.last_seen <= max(3.0, 3 * self.interval)


class GuardReceiver:
    """Bind `$STATE/guard.sock`, hand every report to `callback` as an Event."""

    def __init__(
        self,
        state_dir: str | Path,
        callback: Callable[[Event], None],
        socket_path: str | Path | None = None,
        status_every: float = 1.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = Path(socket_path) if socket_path else self.state_dir / SOCKET_NAME
        self.callback = callback
        self.status_every = status_every
        self.processes: dict[int, GuardProcess] = {}
        self.received = 0
        self.garbage = 0
        self.callback_errors = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_status = 0.0
        self._write_failures = 0

    # --- lifecycle ------------------------------------------------------------------
    def bind(self) -> GuardReceiver:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a stale socket from a previous run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o666)  # apps may run as any user; the pid comes from the kernel
        sock.settimeout(0.25)
        self._sock = sock
        return self

    def start(self) -> GuardReceiver:
        if self._sock is None:
            self.bind()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="guard-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> GuardReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()

    def poll_once(self) -> Event | None:
        """Receive one datagram (waits up to 0.25 s); returns its Event if it made one."""
        assert self._sock is not None, "bind() first"
        try:
            data, anc, _flags, _addr = self._sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(12))
        except (TimeoutError, BlockingIOError, InterruptedError):
            self._maybe_write_status()
            return None
        except OSError as exc:
            if self._stop.is_set():
                return None
            log.warning("guard_receive_failed", error=str(exc))
            time.sleep(0.05)
            return None
        event = self.handle(data, _sender_pid(anc))
        self._maybe_write_status()
        return event

    # --- decoding ---------------------------------------------------------------------
    def handle(self, data: bytes, sender_pid: int | None = None) -> Event | None:
        """One datagram -> one Event (or None for garbage). Never raises."""
        self.received += 1
        try:
            msg = json.loads(data)
            if not isinstance(msg, dict) or msg.get("v") != 1:
                raise ValueError("not a guard message")
            event = self._to_event(msg, sender_pid)
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
            self.garbage += 1
            return None
        if event is not None:
            try:
                self.callback(event)
            except Exception as exc:  # noqa: BLE001 - a bad consumer must not kill the channel
                self.callback_errors += 1
                log.warning("guard_callback_failed", error=repr(exc))
        return event

    def _to_event(self, msg: dict[str, Any], sender_pid: int | None) -> Event | None:
        kind = msg["type"]
        claimed = int(msg["pid"])
        pid = sender_pid if sender_pid else claimed
        detail: dict[str, Any] = {"mode": msg.get("mode")}
        if sender_pid and sender_pid != claimed:
            detail["claimed_pid"] = claimed
        ts = float(msg.get("ts") or time.time())
        proc = self._process(pid, msg, ts)
        if kind == "egress_attempt":
            dropped = int(msg.get("dropped") or 0)
            proc.violations += 1
            proc.dropped += dropped
            port = msg.get("port")
            detail.update(
                event=msg.get("event"),
                reason=msg.get("reason"),
                traceback=list(msg.get("stack") or []),
                dropped=dropped,
                fail_closed=bool(msg.get("fail_closed")),
            )
            return Event(
                layer="guard",
                kind="egress_attempt",
                verdict="audited" if msg.get("verdict") == "audited" else "blocked",
                protocol=msg.get("protocol"),
                dst_ip=msg.get("ip"),
                dst_port=int(port) if isinstance(port, int) else None,
                dst_name=msg.get("host") if not msg.get("ip") else None,
                pid=pid,
                exe=msg.get("exe"),
                stack=msg.get("frame"),
                detail=detail,
                ts=ts,
                id=str(msg.get("id") or _new_id()),
            )
        if kind == "heartbeat":
            proc.last_seen = time.time()
            proc.state = str(msg.get("state") or "running")
            proc.interval = float(msg.get("interval") or proc.interval)
            proc.fail_closed = bool(msg.get("fail_closed"))
            proc.policy_sha256 = msg.get("policy_sha256")
            proc.counters = dict(msg.get("counters") or {})
            detail.update(
                state=proc.state,
                counters=proc.counters,
                fail_closed=proc.fail_closed,
                fail_reason=msg.get("fail_reason"),
                policy_sha256=proc.policy_sha256,
                argv0=msg.get("argv0"),
                interval=proc.interval,  # the report judges heartbeat gaps by it
            )
            return Event(
                layer="guard",
                kind="guard_heartbeat",
                verdict="info",
                pid=pid,
                exe=msg.get("exe"),
                detail=detail,
                ts=ts,
            )
        if kind == "fail_closed":
            proc.fail_closed = True
            detail.update(reason=msg.get("reason"), enforce=bool(msg.get("enforce")))
            return Event(
                layer="guard",
                kind="guard_fail_closed",
                verdict="info",
                pid=pid,
                exe=msg.get("exe"),
                detail=detail,
                ts=ts,
            )
        raise ValueError(f"unknown guard message type {kind!r}")

    def _process(self, pid: int, msg: dict[str, Any], ts: float) -> GuardProcess:
        proc = self.processes.get(pid)
        if proc is None:
            proc = self.processes[pid] = GuardProcess(
                pid=pid,
                exe=msg.get("exe"),
                mode=msg.get("mode"),
                last_seen=time.time(),
                interval=float(msg.get("interval") or 5.0),
            )
        proc.exe = msg.get("exe") or proc.exe
        proc.mode = msg.get("mode") or proc.mode
        return proc

    # --- status for `sentinel status` / report ------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        return {
            "socket": str(self.path),
            "received": self.received,
            "garbage": self.garbage,
            "processes": {
                str(p.pid): {
                    "guard_active": p.active(now),
                    "last_seen": p.last_seen,
                    "exe": p.exe,
                    "mode": p.mode,
                    "state": p.state,
                    "fail_closed": p.fail_closed,
                    "policy_sha256": p.policy_sha256,
                    "violations": p.violations,
                    "dropped": p.dropped,
                    "counters": p.counters,
                }
                for p in self.processes.values()
            },
            "written_at": now,
        }

    def _maybe_write_status(self) -> None:
        now = time.monotonic()
        if self.status_every <= 0 or now - self._last_status < self.status_every:
            return
        self._last_status = now
        try:
            write_json_atomic(self.state_dir / PROCESSES_FILE, self.snapshot())
            self._write_failures = 0
        except Exception as exc:  # noqa: BLE001 - status is best effort
            self._write_failures += 1
            if self._write_failures in (1, 60) or self._write_failures % 3600 == 0:
                # once, then after a minute, then hourly: a broken disk must not flood the log
                log.warning(
                    "guard_status_write_failed", error=repr(exc), failures=self._write_failures
                )


def guard_processes(state_dir: str | Path | None = None, max_age: float = 10.0) -> dict[str, Any]:
    """What the receiver last wrote (for `sentinel status`); guard_active re-judged by age."""
    path = Path(state_dir or default_state_dir()) / PROCESSES_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {"processes": {}}
    now = time.time()
    for proc in data.get("processes", {}).values():
        if now - float(data.get("written_at", 0)) > max_age:
            proc["guard_active"] = False  # the receiver itself stopped updating
    return data


def _sender_pid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return _CREDS.unpack(payload[: _CREDS.size])[0]
    return None


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())
