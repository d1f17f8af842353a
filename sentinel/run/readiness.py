"""What `sentinel run` tells the outside about itself: `daemon.json` in the state directory
(pid, resolver port, ready, services) and the optional ready file holding this network
namespace's id (the compose gate opens the app only for its own namespace)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sentinel.atomic import write_atomic
from sentinel.errors import BadInput, SentinelError
from sentinel.log import get_logger
from sentinel.policy.load import Policy
from sentinel.store.state import write_json

DAEMON_STATE = "daemon.json"
log = get_logger("daemon")


def write_daemon_state(policy_path: Path, policy: Policy, ready: bool, services: list) -> None:
    state = {
        "pid": os.getpid(),
        "updated_at": time.time(),
        "policy": str(policy_path),
        "resolver_port": policy.dns.listen_port,
        "ready": ready,
        "services": sorted(services),
    }
    try:
        write_json(DAEMON_STATE, state)
    except SentinelError as exc:  # bookkeeping only: the daemon goes on
        log.error("state_write_failed", error=exc.message)


def check_ready_file(ready_file: Path | None) -> None:
    """Before anything is applied: a stale ready file (a sentinel that was killed) goes, and
    one that cannot be written is bad input, not a traceback after the apply."""
    if ready_file is None:
        return
    probe = ready_file.with_name(ready_file.name + ".tmp")
    try:
        ready_file.unlink(missing_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BadInput(f"--ready-file {ready_file}: {exc.strerror or exc}") from None


def write_ready_file(ready_file: Path | None) -> None:
    if ready_file is None:
        return
    try:
        write_atomic(ready_file, os.readlink("/proc/self/ns/net") + "\n", mode=0o644)
    except OSError as exc:  # checked at start; gone since: the gate stays shut
        raise SentinelError(f"--ready-file {ready_file}: {exc}") from None
