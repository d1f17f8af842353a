"""Guard start-up cost in every install form, against the same interpreter without the guard.

    python bench/bench_guard_start.py [--starts 40] [--entries 10000] [--code pass] [--cpu N]
                                      [--instructions]

Forms (each a fresh `python -c CODE` of a clean venv, PYTHONDONTWRITEBYTECODE=1 so that no form
can cache bytecode at run time, as with a read-only mount or a tree the app cannot write):
  wheel        the guard folder as pip installs it from a wheel (bytecode compiled by pip)
  compiled     a folder compiled by `sentinel guard path --compile` (an editable tree, the
               compose bind mount)
  pth          sentinel_guard.pth + sentinel_guard.py in site-packages, byte-compiled
  source       a bind-mounted folder WITHOUT bytecode (what --compile fixes), for comparison
each with a small allowlist (3 entries) and a 10,000-CIDR one. Rounds alternate the variants;
the median wall-clock and CPU time (user + system, all threads) per start are printed with the
cost added over no guard (median of each start's difference to the no-guard start of the same
round, with a 95 % distribution-free confidence interval). Goal: <= +3 ms, judged on CPU time (wall-clock on this shared machine
swings by more than the whole figure; it is printed too): "met" when the interval lies at or
under +3 ms, "MISSED" when it lies above, "not shown" when it spans +3 ms. Every start is pinned
to one CPU (`taskset -c N`, default the last one this process may use; `--cpu -1`: unpinned). --instructions also counts the
user-space instructions of one start of each variant under callgrind (valgrind): the same in
every run, where CPU time on a shared machine is not (the kernel's share is not in it). No
network traffic; nothing outside a temp directory is written.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_guard_common import (
    ROOT,
    alternate_pairs,
    armed,
    big_policy,
    clean_env,
    make_venv,
    median_ci,
    medians,
    run_timed,
    verdict,
)

from sentinel.guard import PTH_FILE, RUNTIME_FILE, guard_path
from sentinel.guard.bytecode import compile_guard

GOAL_MS = 3.0


def judge(low_ms: float, high_ms: float) -> str:
    return verdict(low_ms, high_ms, GOAL_MS)


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--no-deps"], check=True)


def forms(tmp: Path, python: str, pth_python: str) -> dict[str, tuple[str, dict[str, str]]]:
    """form -> (interpreter, environment additions)."""
    wheel_dir, target = tmp / "wheel", tmp / "installed"
    pip("wheel", "-w", str(wheel_dir), str(ROOT))
    pip("install", "--target", str(target), str(next(wheel_dir.glob("*.whl"))))
    compiled, source = tmp / "compiled", tmp / "source"
    for folder in (compiled, source):
        shutil.copytree(guard_path(), folder, ignore=shutil.ignore_patterns("__pycache__"))
    compile_guard(compiled, python)  # what `sentinel guard path --compile --python` does
    site = Path(
        subprocess.run(
            [pth_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    shutil.copy(PTH_FILE, site)
    shutil.copy(RUNTIME_FILE, site)
    subprocess.run(  # as docs/guard.md says for the .pth form (the loader is live already)
        [pth_python, "-m", "compileall", "-q", str(site / RUNTIME_FILE.name)],
        env={**clean_env(), "SENTINEL_GUARD": "off"},
        check=True,
    )
    return {
        "wheel": (python, {"PYTHONPATH": str(target / "sentinel" / "guard" / "pythonpath")}),
        "compiled": (python, {"PYTHONPATH": str(compiled)}),
        "pth": (pth_python, {}),
        "source": (python, {"PYTHONPATH": str(source)}),
    }


def instructions(exe: str, env: dict[str, str], code: str, tmp: Path) -> int | None:
    """User-space instructions of one whole `exe -c code` (all threads), None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", exe, "-c", code],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return int(re.findall(r"Collected : (\d+)", out.stderr)[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=40)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--code", default="pass", help="what each start runs (python -c CODE)")
    ap.add_argument("--instructions", action="store_true", help="also count (callgrind)")
    ap.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                    help="pin every start to this CPU (taskset -c); -1: no pinning")  # fmt: skip
    args = ap.parse_args()
    if args.cpu >= 0 and shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux); pass --cpu -1 to run unpinned")
    pin = ["taskset", "-c", str(args.cpu)] if args.cpu >= 0 else []
    with tempfile.TemporaryDirectory(prefix="bench-guard-start-") as tmpdir:
        tmp = Path(tmpdir)
        python = make_venv(tmp / "venv")
        pth_python = make_venv(tmp / "pthvenv")
        base = {**clean_env(), "PYTHONDONTWRITEBYTECODE": "1"}
        lists = {
            "small": armed(tmp, "small"),
            f"{args.entries}": armed(tmp, "big", big_policy(args.entries)),
        }
        installed = forms(tmp, python, pth_python)
        variants: dict[str, tuple[str, dict[str, str]]] = {"none": (python, base)}
        for label, list_env in lists.items():
            for form, (exe, form_env) in installed.items():
                variants[f"{form}/{label}"] = (exe, {**base, **list_env, **form_env})

        def measure(name, spec):
            exe, env = spec
            return run_timed([*pin, exe, "-c", args.code], env, timeout=60)[:2]

        alternate_pairs(variants, 1, measure)  # warm the page cache
        samples = alternate_pairs(variants, args.starts, measure)
        med = {k: medians(v) for k, v in samples.items()}
        # the cost added, start by start against the no-guard start of the same round: steadier
        # than the difference of two medians when the machine's load swings; with a 95 %
        # distribution-free interval for that median
        added = {
            k: (
                median_ci([s[0] - n[0] for s, n in zip(v, samples["none"], strict=True)]),
                median_ci([s[1] - n[1] for s, n in zip(v, samples["none"], strict=True)]),
            )
            for k, v in samples.items()
        }
        pinned = f"pinned to CPU {args.cpu}" if args.cpu >= 0 else "not pinned"
        print(f"python {sys.version.split()[0]}, python -c {args.code!r}, "
              f"{args.starts} starts per variant, {pinned}, medians [95% CI of the added median]")  # fmt: skip
        print(f"{'variant':18} {'wall ms':>8} {'added':>7} {'cpu ms':>8} {'added':>7} "
              f"{'CI':>13}  goal <= +{GOAL_MS:g} ms CPU")  # fmt: skip
        for name, (wall, cpu) in med.items():
            (added_w, _, _), (added_c, lo, hi) = added[name]
            judged = (
                "" if name in ("none",) or name.startswith("source") else judge(lo * 1e3, hi * 1e3)
            )
            print(f"{name:18} {wall * 1e3:8.1f} {added_w * 1e3:+7.1f} {cpu * 1e3:8.1f} "
                  f"{added_c * 1e3:+7.1f} {lo * 1e3:+6.1f}..{hi * 1e3:+5.1f}  {judged}")  # fmt: skip
        if args.instructions:
            counts = {k: instructions(*v, args.code, tmp) for k, v in variants.items()}
            if counts["none"] is None:
                print("instructions: skipped (no valgrind)")
                return
            print("user-space instructions per start (callgrind), added over none:")
            for name, count in counts.items():
                added_i = count - counts["none"]
                print(f"  {name:18} {count / 1e6:7.2f}M  {added_i / 1e6:+6.2f}M "
                      f"({added_i / counts['none']:+.1%})")  # fmt: skip


if __name__ == "__main__":
    main()
