"""One tool run that only reads (`iptables-save -c`, `nft list table ...`): its exit code,
stdout and stderr, without the subprocess module.

`sentinel status` and `report` run three such tools; importing subprocess (selectors,
threading, signal, locale) cost them ~10 ms of CPU at start-up, more than the three runs.
This is what `subprocess.run(cmd, capture_output=True, text=True, timeout=...)` does for a
command with no input: stdin inherited, stdout and stderr read to their end (through one
select loop, so neither pipe can fill up and stall the tool), SIGPIPE and SIGXFSZ back to
their defaults in the child (glibc's posix_spawn also leaves its two internal signals, 32
and 33, ignored there: the tool's own libc sets them up again), the output decoded as UTF-8
with universal newlines, and on a timeout the child killed and reaped before TimeoutError.
A missing tool raises FileNotFoundError, as there. Runs with input (the apply's restores)
still go through subprocess (kernelread.run). tests/test_toolrun.py compares the two.
"""

from __future__ import annotations

import os
import select
import time

_SIGPIPE, _SIGXFSZ, _SIGKILL = 13, 25, 9  # Linux's numbers (the signal module builds enums)


def capture(cmd: list[str], timeout: float) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `cmd`; a signal's death is its negative number."""
    out_r, out_w = os.pipe()  # non-inheritable: only the dup2'd ends reach the tool
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawnp(
            cmd[0],
            cmd,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)],
            setsigdef=(_SIGPIPE, _SIGXFSZ),
        )
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    deadline = time.monotonic() + timeout
    try:
        chunks = _read_all(out_r, err_r, deadline)
        status = _wait(pid, deadline)  # the timeout covers the exit too, as subprocess.run's
    except BaseException:
        try:
            os.kill(pid, _SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # reaped already (an interrupt right after the wait)
        raise
    finally:
        os.close(out_r)
        os.close(err_r)
    out, err = (_text(b"".join(chunks[fd])) for fd in (out_r, err_r))
    return os.waitstatus_to_exitcode(status), out, err


def _read_all(out_r: int, err_r: int, deadline: float) -> dict[int, list[bytes]]:
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    pending = [out_r, err_r]
    for _ in range(10_000_000):  # bounded: each round reads up to 256 KiB or ends a pipe
        if not pending:
            return chunks
        left = deadline - time.monotonic()
        if left <= 0 or not (ready := select.select(pending, [], [], left)[0]):
            raise TimeoutError("the tool did not finish in time")
        for fd in ready:
            data = os.read(fd, 1 << 18)
            if data:
                chunks[fd].append(data)
            else:
                pending.remove(fd)
    raise TimeoutError("output did not end")


def _wait(pid: int, deadline: float) -> int:
    """The tool's wait status once it exits; TimeoutError at the deadline (a tool that closed
    its pipes, or handed them on, and hangs). Polled as subprocess' wait(timeout) polls."""
    delay = 0.0005
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return status
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the tool did not exit in time")
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


def _text(data: bytes) -> str:
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")
