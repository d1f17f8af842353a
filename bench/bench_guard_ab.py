"""Guard start-up, one revision against another in the same run (paired starts).

    python bench/bench_guard_ab.py [--before main] [--rounds 80] [--entries 10000] [--cpu N]

The guard folder (`sentinel guard path --compile` form) of `--before` (any git revision, taken
with `git archive`) and of this tree, each with the allowlist its own compile.py writes (so a
format change is measured with both sides' files), for the 3-entry policy and a 10,000-CIDR
one. Starts alternate (A B B A ...), each pinned to one CPU; printed: the median of each round's
difference (after - before) in CPU time (user + system) and wall-clock, with a 95 %
distribution-free interval. Each start must come up guarded and not failed closed. No network
traffic; nothing outside a temp directory is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_guard_common import (
    PINS,
    POLICY,
    ROOT,
    alternate_pairs,
    big_policy,
    clean_env,
    make_venv,
    median_ci,
    run_timed,
)

from sentinel.guard.bytecode import compile_guard

CODE = (
    "import sentinel_guard as g, sys; s = g.status(); "
    "sys.exit(0 if s['installed'] and not s['fail_closed'] else 3)"
)


def export(rev: str, dest: Path) -> Path:
    """The tree of `rev` (git archive), unpacked under dest."""
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def armed(tree: Path, tmp: Path, label: str, text: str) -> dict[str, str]:
    """A policy and the allowlist that tree's own compile.py writes for it (in a child)."""
    policy, state = tmp / f"policy-{label}.yaml", tmp / f"state-{label}"
    policy.write_text(text)
    write = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from sentinel.guard.compile import write_allowlist; "
        "from sentinel.policy.load import load_policy; "
        "write_allowlist(load_policy(sys.argv[2]), eval(sys.argv[3]), sys.argv[4])"
    )
    subprocess.run(
        [sys.executable, "-c", write, str(tree), str(policy), repr(PINS), str(state)],
        check=True, cwd=tmp,
    )  # fmt: skip
    return {
        "SENTINEL_POLICY": str(policy),
        "SENTINEL_STATE_DIR": str(state),
        "SENTINEL_GUARD": "enforce",
        "SENTINEL_GUARD_SOCKET": str(tmp / "absent.sock"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="main", help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                    help="pin every start to this CPU (taskset -c); -1: no pinning")  # fmt: skip
    args = ap.parse_args()
    pin = ["taskset", "-c", str(args.cpu)] if args.cpu >= 0 else []
    with tempfile.TemporaryDirectory(prefix="bench-guard-ab-") as tmpdir:
        tmp = Path(tmpdir)
        python = make_venv(tmp / "venv")
        trees = {"before": export(args.before, tmp / "before-tree"), "after": ROOT}
        base = {**clean_env(), "PYTHONDONTWRITEBYTECODE": "1"}
        variants: dict[str, dict[str, str]] = {}
        lists = (("small", POLICY), (f"{args.entries}", big_policy(args.entries)))
        for side, tree in trees.items():
            folder = tmp / f"guard-{side}"
            shutil.copytree(
                tree / "sentinel/guard/pythonpath",
                folder,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            compile_guard(folder, python)
            for label, text in lists:
                work = tmp / f"{side}-{label}"
                work.mkdir()
                env = armed(tree, work, label, text)
                variants[f"{side}/{label}"] = {**base, **env, "PYTHONPATH": str(folder)}

        def measure(name, env):
            return run_timed([*pin, python, "-c", CODE], env, timeout=60)[:2]

        alternate_pairs(variants, 2, measure)  # warm the page cache
        samples = alternate_pairs(variants, args.rounds, measure)
        print(f"python {sys.version.split()[0]}, {args.rounds} paired starts, after = this tree, "
              f"before = {args.before}; median of (after - before) [95% CI]")  # fmt: skip
        for label, _ in lists:
            after, before = samples[f"after/{label}"], samples[f"before/{label}"]
            row = []
            for i, what in ((1, "cpu"), (0, "wall")):
                diffs = [a[i] - b[i] for a, b in zip(after, before, strict=True)]
                m, lo, hi = median_ci(diffs)
                row.append(f"{what} {m * 1e3:+.2f} ms [{lo * 1e3:+.2f}..{hi * 1e3:+.2f}]")
            print(f"  {label:>6}: " + ",  ".join(row))


if __name__ == "__main__":
    main()
