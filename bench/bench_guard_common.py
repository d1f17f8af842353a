"""What bench_guard.py (per call) and bench_guard_start.py (start-up) share: the policies, a
clean interpreter, the guard's environment, timing one child process, and the summary rows.

Not a bench itself. Nothing outside the caller's temporary directory is written; no traffic.
"""

from __future__ import annotations

import ipaddress
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sentinel.guard.compile import write_allowlist  # noqa: E402
from sentinel.policy.load import load_policy  # noqa: E402

# 3 allowlist entries: a pinned name (one address), a /24
POLICY = """\
version: 1
mode: enforce
allow:
  - {name: api, host: api.test, ports: [8080], protocol: tcp}
  - {name: lan, cidr: 198.18.7.0/24, ports: [443]}
"""
PINS = {"api.test": ["198.18.0.2"]}


def big_policy(n: int) -> str:
    """n allowlisted /30 CIDRs in 198.19.0.0/16 (the documentation range)."""
    base = int(ipaddress.ip_address("198.19.0.0"))
    rows = "".join(
        f"  - {{name: e{i}, cidr: {ipaddress.ip_network((base + 4 * i, 30))}, ports: [443]}}\n"
        for i in range(n)
    )
    return "version: 1\nmode: enforce\nallow:\n" + rows


def clean_env() -> dict[str, str]:
    """This environment without SENTINEL_* and PYTHON* settings (no guard, no PYTHONPATH)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "PYTHON"))}


def make_venv(path: Path) -> str:
    """A fresh venv without pip (no site-packages noise): its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return str(path / "bin" / "python")


def armed(tmp: Path, label: str, policy_text: str = POLICY) -> dict[str, str]:
    """Write the policy and its compiled allowlist under tmp; the guard's environment for them
    (enforce; the report socket absent, so no receiver's work is measured)."""
    policy = tmp / f"policy-{label}.yaml"
    policy.write_text(policy_text)
    state = tmp / f"state-{label}"
    write_allowlist(load_policy(policy), PINS, state)
    return {
        "SENTINEL_POLICY": str(policy),
        "SENTINEL_STATE_DIR": str(state),
        "SENTINEL_GUARD": "enforce",
        "SENTINEL_GUARD_SOCKET": str(tmp / "absent.sock"),
    }


def run_timed(
    cmd: list[str], env: dict[str, str], timeout: float = 300
) -> tuple[float, float, str]:
    """(wall s, CPU s of the child and its threads, stdout). getrusage: microsecond CPU."""
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {out.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stdout


def alternate(variants: dict[str, object], rounds: int, measure) -> dict[str, list]:
    """measure(name, spec) for every variant, `rounds` times, alternating variants each round
    (slow drifts of the machine's load hit every variant alike)."""
    samples: dict[str, list] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, spec in variants.items():
            samples[name].append(measure(name, spec))
    return samples


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the median and a distribution-free confidence interval for it, the
    k-th smallest and k-th largest values, k the largest with P(Binomial(n, 1/2) < k) <= (1 -
    confidence) / 2 (no assumption about the shape of the noise; k = 1 when n is too small)."""
    ordered = sorted(values)
    n, tail, k, below = len(ordered), (1 - confidence) / 2, 0, 0.0
    while k < n // 2:
        below += math.comb(n, k) / 2**n  # P(X = k) added: P(X <= k)
        if below > tail:
            break
        k += 1
    k = max(k, 1)
    return statistics.median(ordered), ordered[k - 1], ordered[n - k]


def alternate_pairs(variants: dict[str, object], rounds: int, measure) -> dict[str, list]:
    """Like alternate(), but every other round runs the variants in reverse order (A B C, C B A,
    …), so that the first variant's neighbour is not always the same one and a drift inside a
    round does not favour a position."""
    samples: dict[str, list] = {name: [] for name in variants}
    names = list(variants)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            samples[name].append(measure(name, variants[name]))
    return samples


def medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def verdict(low: float, high: float, goal: float) -> str:
    """A 95 % interval against an upper goal: wholly below it, wholly above it, or across."""
    if high <= goal:
        return "met"
    if low > goal:
        return "MISSED"
    return "not shown"
