"""toolrun.capture (the kernel reads' tool runs without the subprocess module) returns what
`subprocess.run(cmd, capture_output=True, text=True, timeout=...)` returns: exit code (a
signal's death as its negative number), stdout and stderr with universal newlines, both
pipes read to their end however large; a missing tool and a timeout raise as there, and the
timed-out child is killed and reaped."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from sentinel.enforce import toolrun

CASES = [
    ["sh", "-c", "printf 'a\\r\\nb\\rc\\n'; printf 'oops\\n' >&2; exit 3"],
    ["sh", "-c", "kill -9 $$"],
    # more than a pipe holds on both streams, interleaved: neither may stall the tool
    [
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do head -c 70000 /dev/zero | tr '\\0' a; "
        "head -c 70000 /dev/zero | tr '\\0' b >&2; done",
    ],  # fmt: skip
    ["sh", "-c", "cat; echo done"],  # stdin inherited (here: whatever pytest gives, at its end)
    ["true"],
]


@pytest.mark.parametrize("cmd", CASES)
def test_capture_is_what_subprocess_run_returns(cmd):
    with open(os.devnull) as null:
        saved = os.dup(0)
        os.dup2(null.fileno(), 0)
        try:
            want = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            got = toolrun.capture(cmd, timeout=30)
        finally:
            os.dup2(saved, 0)
            os.close(saved)
    assert got == (want.returncode, want.stdout, want.stderr)


def test_the_tool_starts_with_the_signal_dispositions_subprocess_gives_it():
    cmd = ["sh", "-c", "grep -E '^(SigIgn|SigBlk)' /proc/self/status"]
    want = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    got = toolrun.capture(cmd, timeout=30)[1]

    def masks(text: str) -> dict[str, int]:
        lines = dict(line.split(":\t") for line in text.splitlines())
        glibc = (1 << 31) | (1 << 32)  # signals 32, 33: posix_spawn's child ignores them
        return {k: int(v, 16) & ~glibc for k, v in lines.items()}

    assert masks(got) == masks(want) and masks(got)["SigIgn"] & (1 << 12) == 0  # SIGPIPE


def test_a_missing_tool_and_a_timeout():
    with pytest.raises(FileNotFoundError):
        toolrun.capture(["sentinel-no-such-tool"], timeout=5)
    before = _children()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        toolrun.capture(["sh", "-c", "echo partial; exec sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 20
    # the tool was killed and reaped: no new child of ours left, running or zombie (other
    # tests' children may live on in this process, so "no child at all" is the wrong question)
    assert _children() <= before


def _children() -> set[int]:
    """This process's children: running, or exited and not reaped (zombies)."""
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        if int(ppid) == os.getpid():
            out.add(int(pid))
    return out


def test_no_pipe_end_leaks_into_the_tool():
    code, out, _ = toolrun.capture(["sh", "-c", "ls -l /proc/self/fd"], timeout=10)
    pipes = [line for line in out.splitlines() if "pipe:" in line]
    ours = [line for line in pipes if line.split("->")[0].split()[-1] in ("1", "2")]
    assert code == 0 and len(ours) == 2, out
    before = set(os.listdir("/proc/self/fd"))
    toolrun.capture(["true"], timeout=10)
    assert set(os.listdir("/proc/self/fd")) == before  # every pipe end closed here too


def test_a_tool_that_closes_its_output_and_hangs_times_out_too():
    # subprocess.run's timeout covers the wait for the exit, not only the reads: a tool that
    # closed both pipes (or handed them on) and then hangs must not hang the read with it
    cmd = ["sh", "-c", "exec >&- 2>&-; exec sleep 30"]
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(cmd, capture_output=True, text=True, timeout=1)
    before = _children()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        toolrun.capture(cmd, timeout=1)
    assert time.monotonic() - started < 15
    assert _children() <= before  # killed and reaped: no sleeper, no zombie of ours left
