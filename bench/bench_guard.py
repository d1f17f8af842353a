"""Cost of the in-process guard per call (loopback connect, getaddrinfo, the allowlist decision)
against no guard, an empty audit hook and pytest-socket-style socket patching. Start-up cost:
bench_guard_start.py (every install form).

Prints figures; not a test. Every variant runs in its own child interpreter; rounds alternate
between variants (A B C D, then D C B A, ...), and inside the child the timed loop is measured
by wall-clock (perf_counter) and by CPU time of the whole process (process_time: user + system,
all threads, the guard's reporter included). Per round, each variant's per-call figure is
paired with the no-guard run of the same round; printed: the median over rounds of those
ratios with a 95 % distribution-free confidence interval for the median (order statistics),
and the median per-call difference. Goal for the loopback connect: <= 1.05x in both wall-clock
and CPU time: "met" when the interval lies at or below 1.05, "MISSED" when it lies above,
"not shown" when it spans 1.05 (the machine's noise is larger than the question).

    python bench/bench_guard.py [--calls 2000] [--rounds 21] [--what connect] [--cpu N]
                                [--instructions 1000]

Every child is pinned to one CPU (`taskset -c N`, default the last one this process may use; the
same CPU for every variant and round, `--cpu -1` for no pinning): the variants then share one
core's caches and frequency and differ only by what they run. `--what connect` measures only the
loopback connect (longer runs on the one goal: e.g. `--what connect --rounds 61`).

--paired R adds a second estimate of the loopback connect, R rounds: each child times the cycle
twice, first with nothing installed, then (after 200 warm-up cycles) with the guard booted in
that same process (`sentinel_guard.boot()`: the same hook and socket.py wrappers as at
start-up), with an empty audit hook, or with nothing (the control, which measures what a second
block costs by itself: TIME_WAIT sockets piling up, a warmer cache). Per round the figure is
(guard block 2 / block 1) / (control block 2 / block 1): the process, its memory layout and the
CPU it ran on are the same for both blocks, so that noise cancels; what is left is the load
between the two blocks. Same 95 % interval and verdict rule.

--instructions N also counts the user-space instructions of one loopback connect cycle under
callgrind (valgrind): the same every run, where time on a shared machine is not.

Traffic: loopback only. The "decision" figure connects to an allowlisted 198.18.x address from
inside a private, empty network namespace (unshare -n, root only), where it fails at once with
ENETUNREACH, so no packet leaves; it is skipped without root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench_guard_common import alternate_pairs, armed, clean_env, median_ci, run_timed, verdict

from sentinel.guard import guard_path

GOAL = 1.05

# A tiny stand-in for pytest-socket's socket_allow_hosts: a Python-level wrapper of connect.
MONKEYPATCH = """
import socket
_real_connect = socket.socket.connect
_ALLOWED = {"127.0.0.1", "::1", "localhost"}
def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and host not in _ALLOWED:
        raise RuntimeError("blocked")
    return _real_connect(self, address)
socket.socket.connect = _guarded_connect
"""

# The floor for any audit-hook guard: CPython's cost of calling one Python hook per event.
EMPTY_HOOK = """
import sys
sys.addaudithook(lambda event, args: None)
"""

PYTEST_SOCKET = """
import pytest_socket
pytest_socket.socket_allow_hosts(["127.0.0.1", "::1"], allow_unix_socket=True)
"""

CHILD = """
import json, os, socket, sys, time
setup = os.environ.get("BENCH_SETUP")
if setup:
    exec(setup)
what, n = sys.argv[1], int(sys.argv[2])
if what == "connect":
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(512)
    addr = srv.getsockname()
    def once():
        c = socket.socket(); c.connect(addr); srv.accept()[0].close(); c.close()
elif what == "getaddrinfo":
    def once():
        socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)
elif what == "gai_numeric":  # the cheapest audited call: the hook's own cost shows most here
    def once():
        socket.getaddrinfo("127.0.0.1", 80, socket.AF_INET, socket.SOCK_STREAM, 0,
                           socket.AI_NUMERICHOST)
elif what == "decision":
    def once():
        c = socket.socket()
        try:
            c.connect(("198.18.0.2", 8080))
        except OSError as exc:
            assert exc.errno == 101, exc  # ENETUNREACH: allowed by the guard, no route here
        finally:
            c.close()
for _ in range(200):
    once()
# CPU time (user + system, all threads, the reporter's included): less disturbed than wall
# time by other load on a shared machine
w, t = time.perf_counter_ns(), time.process_time_ns()
for _ in range(n):
    once()
print(json.dumps([(time.perf_counter_ns() - w) / n / 1e9, (time.process_time_ns() - t) / n / 1e9]))
"""


# A child that times the connect cycle twice: block 1 with nothing installed, then block 2 after
# installing what argv[1] names in this same process (see --paired).
PAIRED_CHILD = """
import json, os, socket, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(512)
addr = srv.getsockname()
def once():
    c = socket.socket(); c.connect(addr); srv.accept()[0].close(); c.close()
def block():
    for _ in range(200):
        once()
    w, t = time.perf_counter_ns(), time.process_time_ns()
    for _ in range(n):
        once()
    return [(time.perf_counter_ns() - w) / n / 1e9, (time.process_time_ns() - t) / n / 1e9]
first = block()
if mode == "guard":
    sys.path.insert(0, os.environ["BENCH_GUARD_PATH"])
    import sentinel_guard
    sentinel_guard.boot("bench")
    assert sentinel_guard.status()["installed"] and not sentinel_guard.status()["fail_closed"]
elif mode == "empty-hook":
    sys.addaudithook(lambda event, args: None)
print(json.dumps([first, block()]))
"""


def paired(python: str, env: dict, mode: str, calls: int, cpu: int) -> tuple[float, float]:
    """(wall, CPU) of block 2 / block 1 in one child."""
    cmd = [python, "-c", PAIRED_CHILD, mode, str(calls)]
    if cpu >= 0:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    first, second = json.loads(run_timed(cmd, env)[2].strip().splitlines()[-1])
    return second[0] / first[0], second[1] / first[1]


def print_paired(python: str, guard_env: dict, base_env: dict, args) -> None:
    env = {**guard_env, "BENCH_GUARD_PATH": str(guard_path())}
    del env["PYTHONPATH"]  # booted by the child itself, after block 1
    modes = {"control": base_env, "guard": env, "empty-hook": base_env}
    samples = alternate_pairs(
        modes, args.paired, lambda mode, e: paired(python, e, mode, args.calls, args.cpu)
    )
    control = samples["control"]
    cells = []
    for mode in ("guard", "empty-hook"):
        runs = samples[mode]
        rw = median_ci([r[0] / c[0] for r, c in zip(runs, control, strict=True)])
        rc = median_ci([r[1] / c[1] for r, c in zip(runs, control, strict=True)])
        cells.append(
            f"{mode} wall x{rw[0]:.3f} [{rw[1]:.3f}-{rw[2]:.3f}] CPU x{rc[0]:.3f} "
            f"[{rc[1]:.3f}-{rc[2]:.3f}]"
        )
        if mode == "guard":
            verdicts = (judged(rw[1], rw[2]), judged(rc[1], rc[2]))
    c_cpu = statistics.median(c[1] for c in control)
    print(f"{'paired':12} {args.paired} rounds, block 2 / block 1 against the control's "
          f"(control x{c_cpu:.3f} CPU by itself):\n             " + "\n             ".join(cells))  # fmt: skip
    print(f"{'':12} guard loopback connect (paired), goal <= {GOAL}x: wall {verdicts[0]}, "
          f"CPU {verdicts[1]}")  # fmt: skip


def per_call(
    python: str, what: str, env: dict, calls: int, netns: bool, cpu: int
) -> tuple[float, float]:
    """(wall s, CPU s) per call, timed inside the child (start-up excluded)."""
    cmd = [python, "-c", CHILD, what, str(calls)]
    if netns:
        cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    if cpu >= 0:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    wall, cpu = json.loads(run_timed(cmd, env)[2].strip().splitlines()[-1])
    return wall, cpu


def instructions(python: str, env: dict, calls: int, tmp: Path) -> float | None:
    """User-space instructions per loopback connect cycle of the app's own thread (callgrind:
    deterministic, unlike time on a loaded machine; the kernel's share is not in it). The
    difference between a run of `calls` + 1 cycles and one of 1; None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    totals = []
    for n in (1, calls + 1):  # the child divides by n
        out = tmp / f"cg-{n}"
        out.mkdir(exist_ok=True)
        cmd = [
            "valgrind", "--tool=callgrind", "--separate-threads=yes",
            f"--callgrind-out-file={out}/cg.%p", python, "-c", CHILD, "connect", str(n),
        ]  # fmt: skip
        run_timed(cmd, {**env, "PYTHONHASHSEED": "0"}, timeout=600)
        main_thread = next(out.glob("cg.*-01"))  # thread 1: the app's main thread
        line = next(x for x in main_thread.read_text().splitlines() if x.startswith("totals:"))
        totals.append(int(line.split()[1]))
        shutil.rmtree(out)
    return (totals[1] - totals[0]) / calls


def judged(low: float, high: float) -> str:
    return verdict(low, high, GOAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument(
        "--instructions", type=int, default=0, metavar="N",
        help="also count instructions per connect cycle under callgrind (N cycles)",
    )  # fmt: skip
    parser.add_argument(
        "--what", default="connect,getaddrinfo,gai_numeric,decision",
        help="comma-separated: connect, getaddrinfo, gai_numeric, decision",
    )  # fmt: skip
    parser.add_argument(
        "--cpu", type=int, default=max(os.sched_getaffinity(0)),
        help="pin every child to this CPU (taskset -c); -1: no pinning",
    )  # fmt: skip
    parser.add_argument(
        "--paired", type=int, default=0, metavar="R",
        help="also the in-process paired estimate of the loopback connect, R rounds",
    )  # fmt: skip
    parser.add_argument(
        "--variants", default="",
        help="comma-separated subset of none, guard, empty-hook, pytest-socket/monkeypatch",
    )  # fmt: skip
    args = parser.parse_args()
    if args.cpu >= 0 and shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux); pass --cpu -1 to run unpinned")
    root = os.geteuid() == 0 and shutil.which("unshare") is not None

    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmpdir:
        base_env = clean_env()
        guard_env = {**base_env, **armed(Path(tmpdir), "small"), "PYTHONPATH": str(guard_path())}
        try:
            import pytest_socket  # noqa: F401

            patch_name, patch_setup = "pytest-socket", PYTEST_SOCKET
        except ImportError:
            patch_name, patch_setup = "monkeypatch", MONKEYPATCH
        variants = {
            "none": base_env,
            "guard": guard_env,
            "empty-hook": {**base_env, "BENCH_SETUP": EMPTY_HOOK},
            patch_name: {**base_env, "BENCH_SETUP": patch_setup},
        }
        if args.variants:  # "none" always: every ratio is to it
            keep = {"none", *args.variants.split(",")}
            variants = {k: v for k, v in variants.items() if k in keep}
        python = sys.executable
        pinned = f"pinned to CPU {args.cpu}" if args.cpu >= 0 else "not pinned"
        print(f"python {sys.version.split()[0]}  calls/round {args.calls}  rounds {args.rounds}  "
              f"{pinned}; per variant: median per-call wall / CPU, then the median of per-round "
              "ratios to none [95% CI]")  # fmt: skip
        for what in filter(None, args.what.split(",")):
            netns = what == "decision"
            if netns and not root:
                print(f"{what:12} skipped (needs root for a private network namespace)")
                continue
            todo = {  # the patch baseline has no allowlist decision to compare
                k: v for k, v in variants.items() if not (netns and k == patch_name)
            }
            samples = alternate_pairs(
                todo,
                args.rounds,
                lambda _, env, what=what, netns=netns: per_call(
                    python, what, env, args.calls, netns, args.cpu
                ),
            )
            none = samples["none"]
            cells = []
            for name, runs in samples.items():
                wall = statistics.median(r[0] for r in runs) * 1e6
                cpu = statistics.median(r[1] for r in runs) * 1e6
                if name == "none":
                    cells.append(f"none {wall:.2f}/{cpu:.2f} us")
                    continue
                rw = median_ci([r[0] / n[0] for r, n in zip(runs, none, strict=True)])
                rc = median_ci([r[1] / n[1] for r, n in zip(runs, none, strict=True)])
                dc = statistics.median((r[1] - n[1]) * 1e6 for r, n in zip(runs, none, strict=True))
                cells.append(
                    f"{name} {wall:.2f}/{cpu:.2f} us: wall x{rw[0]:.3f} [{rw[1]:.3f}-{rw[2]:.3f}]"
                    f" CPU x{rc[0]:.3f} [{rc[1]:.3f}-{rc[2]:.3f}] ({dc:+.2f} us)"
                )
                if what == "connect" and name == "guard":
                    verdicts = (judged(rw[1], rw[2]), judged(rc[1], rc[2]))
            print(f"{what:12} " + "\n             ".join(cells))
            if what == "connect":
                print(f"{'':12} guard loopback connect, goal <= {GOAL}x: wall {verdicts[0]}, "
                      f"CPU {verdicts[1]}")  # fmt: skip
        if args.paired:
            print_paired(python, guard_env, base_env, args)
        if args.instructions:
            counts = {
                k: instructions(python, env, args.instructions, Path(tmpdir))
                for k, env in variants.items()
            }
            if counts["none"] is None:
                print("instructions: skipped (no valgrind)")
            else:
                print(
                    "user-space instructions per connect cycle (main thread, callgrind): "
                    + "  ".join(
                        f"{k} {v / 1e3:.1f}k ({v / counts['none']:.3f})" for k, v in counts.items()
                    )
                )


if __name__ == "__main__":
    main()
