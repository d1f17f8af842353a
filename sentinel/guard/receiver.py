"""The sentinel's end of the guard channel: a unix datagram socket that turns guard reports into
`Event`s and keeps track of which processes run a live guard (heartbeats).

Datagrams are JSON objects (see docs/guard.md), parsed with limits by `sentinel.guard.wire`:
anything else is counted as malformed (by reason) and ignored; a bad sender cannot stop the
receiver. Identity comes from the kernel (SO_PASSCRED, `sentinel.guard.identity`): processes are
tracked per kernel-verified identity, and what a datagram only claims (pid, exe, interval, ts)
is recorded as a claim.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.atomic import write_json_atomic
from sentinel.guard import wire
from sentinel.guard.identity import CREDS_SPACE, Identities, Sender
from sentinel.guard.processes import PROCESSES_FILE, guard_processes  # noqa: F401 - re-exported
from sentinel.guard.wire import MAX_DATAGRAM
from sentinel.lazylog import get_logger
from sentinel.store.events import Event

SOCKET_NAME = "guard.sock"
MAX_PROCESSES = 4096  # identities tracked at once
CLOCK_SLACK = 5.0  # a claimed ts further than this from our clock is replaced by ours
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
    identity: str = ""  # "pid:PID:START" (kernel-verified) or "unverified:..."
    verified: bool = True

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
        self.processes: dict[str, GuardProcess] = {}  # identity -> process
        self.received = 0
        self.garbage = 0
        self.callback_errors = 0
        self.receive_errors = 0
        self.loop_errors = 0
        self.malformed: dict[str, int] = {}  # reason -> count
        self.last_loop = time.monotonic()  # the watchdog's sign of life
        self.identities = Identities()
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
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - one bad round must not end the receiver
                self.loop_errors += 1
                log.warning("guard_receiver_error", error=repr(exc)[:200])
                time.sleep(0.05)

    def poll_once(self) -> Event | None:
        """Receive one datagram (waits up to 0.25 s); returns its Event if it made one."""
        assert self._sock is not None, "bind() first"
        try:
            data, anc, flags, _addr = self._sock.recvmsg(MAX_DATAGRAM + 1, CREDS_SPACE)
        except (TimeoutError, BlockingIOError, InterruptedError):
            self.last_loop = time.monotonic()
            self._maybe_write_status()
            return None
        except OSError as exc:
            if self._stop.is_set():
                return None
            self.receive_errors += 1
            log.warning("guard_receive_failed", error=str(exc))
            time.sleep(0.05)
            return None
        self.last_loop = time.monotonic()
        if flags & socket.MSG_TRUNC or flags & socket.MSG_CTRUNC or len(data) > MAX_DATAGRAM:
            self.received += 1
            self._malformed("datagram too large")
            self._maybe_write_status()
            return None
        try:
            sender = self.identities.sender(anc)
        except Exception:  # noqa: BLE001 - /proc oddities: no identity, never a dead loop
            sender = Sender(None, None, None)
        event = self.handle(data, sender)
        self._maybe_write_status()
        return event

    # --- decoding ---------------------------------------------------------------------
    def handle(self, data: bytes, sender: Sender | int | None = None) -> Event | None:
        """One datagram -> one Event (or None for garbage). Never raises: whatever a datagram
        holds, it is counted as malformed (by reason) or becomes an event."""
        self.received += 1
        if not isinstance(sender, Sender):  # a bare pid (tests, callers without ancillary data)
            sender = Sender(sender or None, None, None)
        try:
            msg = wire.decode(data)
            event = self._to_event(msg, sender)
        except wire.Malformed as exc:
            self._malformed(exc.reason)
            return None
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the receiver
            self._malformed(f"unexpected {type(exc).__name__}")
            log.warning("guard_decode_failed", error=repr(exc)[:200])
            return None
        if event is not None:
            try:
                self.callback(event)
            except Exception as exc:  # noqa: BLE001 - a bad consumer must not kill the channel
                self.callback_errors += 1
                log.warning("guard_callback_failed", error=repr(exc))
        return event

    def _malformed(self, reason: str) -> None:
        self.garbage += 1
        if len(self.malformed) < 64 or reason in self.malformed:
            self.malformed[reason] = self.malformed.get(reason, 0) + 1
        if self.garbage in (1, 10, 100) or self.garbage % 1000 == 0:
            log.warning("guard_malformed", reason=reason, malformed=self.garbage)

    def _to_event(self, msg: dict[str, Any], sender: Sender) -> Event | None:
        kind, claimed = msg["type"], msg["pid"]
        now = time.time()
        pid = sender.kernel_pid  # the kernel's word; None when it cannot say (other pid ns)
        identity = sender.detail(claimed, msg["exe"])
        if sender.kernel_pid is None and sender.uid is None:  # no credentials at all (tests)
            pid, identity["verified"] = claimed or None, False
        exe = sender.exe or msg["exe"]
        detail: dict[str, Any] = {"mode": msg["mode"], "sender": identity}
        # time is ours: a claimed ts is kept only when it is close to our clock
        ts = msg["ts"] if msg["ts"] is not None and abs(msg["ts"] - now) <= CLOCK_SLACK else now
        if msg["ts"] is not None and ts != msg["ts"]:
            detail["claimed_ts"] = msg["ts"]
        proc = self._process(identity["identity"], pid, exe, msg)
        if kind == "egress_attempt":
            proc.violations += 1
            proc.dropped += msg["dropped"]
            detail.update(
                event=msg["event"],
                reason=msg["reason"],
                traceback=msg["stack"],
                dropped=msg["dropped"],
                fail_closed=msg["fail_closed"],
            )
            return Event(
                layer="guard",
                kind="egress_attempt",
                verdict="audited" if msg["verdict"] == "audited" else "blocked",
                protocol=msg["protocol"],
                dst_ip=msg["ip"],
                dst_port=msg["port"],
                dst_name=msg["host"] if not msg["ip"] else None,
                pid=pid,
                exe=exe,
                stack=msg["frame"],
                detail=detail,
                ts=ts,
                id=msg["id"] or _new_id(),
            )
        if kind == "heartbeat":
            proc.last_seen = now
            proc.state = msg["state"] or "running"
            proc.interval = msg["interval"] or proc.interval
            proc.fail_closed = msg["fail_closed"]
            proc.policy_sha256 = msg["policy_sha256"]
            proc.counters = msg["counters"]
            detail.update(
                state=proc.state,
                counters=proc.counters,
                fail_closed=proc.fail_closed,
                fail_reason=msg["fail_reason"],
                policy_sha256=proc.policy_sha256,
                argv0=msg["argv0"],
                interval=proc.interval,  # clamped: the report judges gaps by it, per sender
            )
            if msg["claimed_interval"] not in (None, proc.interval):
                detail["claimed_interval"] = msg["claimed_interval"]
            return Event(
                layer="guard",
                kind="guard_heartbeat",
                verdict="info",
                pid=pid,
                exe=exe,
                detail=detail,
                ts=now,  # never the claimed time: a forged ts must not move a gap
            )
        proc.fail_closed = True  # "fail_closed"
        detail.update(reason=msg["reason"], enforce=msg["enforce"])
        return Event(
            layer="guard",
            kind="guard_fail_closed",
            verdict="info",
            pid=pid,
            exe=exe,
            detail=detail,
            ts=ts,
        )

    def _process(
        self, identity: str, pid: int | None, exe: str | None, msg: dict[str, Any]
    ) -> GuardProcess:
        proc = self.processes.get(identity)
        if proc is None:
            if len(self.processes) >= MAX_PROCESSES:
                self._forget_oldest()
            proc = self.processes[identity] = GuardProcess(
                pid=pid or 0,
                exe=exe,
                mode=msg["mode"],
                last_seen=time.time(),
                interval=msg["interval"] or 5.0,
                identity=identity,
                verified=identity.startswith("pid:"),
            )
        proc.exe = exe or proc.exe
        proc.mode = msg["mode"] or proc.mode
        return proc

    def _forget_oldest(self) -> None:
        """Bounded memory: a flood of forged identities pushes out the longest-quiet one."""
        oldest = min(self.processes.values(), key=lambda p: p.last_seen)
        del self.processes[oldest.identity]

    # --- status for `sentinel status` / report ------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        return {
            "socket": str(self.path),
            "received": self.received,
            "garbage": self.garbage,
            "malformed": dict(self.malformed),
            "processes": {
                (str(p.pid) if p.verified else p.identity): {
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
                    "identity": p.identity,
                    "verified": p.verified,
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


def _new_id() -> str:
    from sentinel.ids import new_id

    return new_id()
