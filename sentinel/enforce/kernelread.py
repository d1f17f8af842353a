"""Read what the kernel holds of ours: the read path of `sentinel status` and `report`.

Read-only and light: it imports neither render.py nor netfilter.py (the apply machinery), so a
status check does not pay for them at start-up. netfilter.read_state is this same read with
netfilter's own tool runner and set reader (what its tests replace), and re-exports the names.
"""

from __future__ import annotations

from collections.abc import Callable

from sentinel.enforce import ipsetdump, netdev, toolrun
from sentinel.enforce.kernelstate import BACKENDS, DEFAULT_BACKEND, IpSet, KernelState
from sentinel.enforce.savetext import family_text, parse_sets, rule_counters, set_names
from sentinel.errors import SentinelError

SetCounters = dict[tuple[str, str], tuple[int, int]]


def run(cmd: list[str], stdin: str | None = None) -> str:
    """One tool run: its stdout, or SentinelError naming the tool and its complaint. A run
    without input (the reads) goes through toolrun, not subprocess (start-up time)."""
    try:
        if stdin is None:
            code, out, err = toolrun.capture(cmd, timeout=60)
        else:
            code, out, err = _with_input(cmd, stdin)
    except FileNotFoundError:
        raise SentinelError(f"{cmd[0]} not found: install iptables and ipset") from None
    except TimeoutError:
        raise SentinelError(f"{cmd[0]} did not finish in 60 s") from None
    if code != 0:
        raise SentinelError(f"{' '.join(cmd)} failed: {err.strip() or code}")
    return out


def _with_input(cmd: list[str], stdin: str) -> tuple[int, str, str]:
    import subprocess  # the apply's restores: a document on stdin

    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise TimeoutError from None
    return done.returncode, done.stdout, done.stderr


def read_state(
    backend: str = DEFAULT_BACKEND,
    set_counters: bool = True,
    *,
    runner: Callable[..., str] = run,
    read_sets_netlink: Callable[[bool], tuple | None] | None = None,
    read_netdev: Callable[[], tuple[str, dict[int, int]]] | None = None,
) -> KernelState:
    """What the kernel holds of ours right now, with packet counters: one `iptables-save -c`
    per family and one read of every set (ours kept: ipsetdump, else `ipset save`).
    `set_counters=False` (apply's own reads, which compare entries only): the per-entry
    counters may be left empty. The keyword arguments: netfilter's runner and readers."""
    state = KernelState()
    for family, tool in BACKENDS[backend].items():
        saved = runner([f"{tool}-save", "-c"])
        state.dumps[family] = saved
        state.text[family] = family_text(saved)
        state.counters.update(rule_counters(saved, family))
    fast = (read_sets_netlink or ipsetdump.read)(set_counters)
    state.sets, state.set_counters, state.set_names = fast or _read_sets_text(runner)
    state.netdev, state.netdev_counters = (read_netdev or netdev.read_netdev)()
    return state


def _read_sets_text(runner: Callable[..., str]) -> tuple[list[IpSet], SetCounters, set[str]]:
    """`ipset save`'s text, when ipsetdump cannot read the kernel's dump exactly."""
    saved = runner(["ipset", "save"])
    return (*parse_sets(saved), set_names(saved))
