"""Whole-process speed of the commands a user waits for, each against its baseline in the same run.

Run as root: `python bench/bench_cli.py [--entries 10000] [--runs 5]`. Prints figures; not a test.

- `sentinel check big.yaml` vs a fresh interpreter that only parses the file with PyYAML's
  CSafeLoader (goal <= 1.3x);
- `sentinel apply -p big.yaml` vs `iptables-nft-restore` of the flat equivalent (one rule per
  entry), each in a fresh network namespace of this script's own (goal <= 2x);
- `sentinel status` and `sentinel report --last 10m` after an apply vs a bare `python -c
  "import json"` plus the kernel reads they need, run as the same tools (goal <= 2x);
- the import-time table of each command (`python -X importtime`, top modules).

Wall-clock medians (alternating rounds) and CPU time (user + system of the process and its
children) are both printed: on a shared machine CPU time is the steadier of the two.
The package is byte-compiled first, as a wheel install leaves it: under
PYTHONDONTWRITEBYTECODE=1 (set in some shells) an editable checkout would otherwise compile
every module it imports on every run, which no installed sentinel does.
Namespaces are created with a unique prefix and deleted in `finally`; no traffic is sent.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PYTHON = sys.executable
SENTINEL = str(Path(PYTHON).with_name("sentinel"))
PARSE_ONLY = "import sys, yaml; yaml.load(open(sys.argv[1]), Loader=yaml.CSafeLoader)"
KERNEL_READS = (  # what `status` reads: both rule dumps with counters, the sets
    ["iptables-nft-save", "-c"],
    ["ip6tables-nft-save", "-c"],
    ["ipset", "list", "-n"],
    ["ipset", "save", "sentinel-allow4"],
    ["ipset", "save", "sentinel-allow6"],
)


def policy_text(n: int) -> str:
    base = int(ipaddress.ip_address("198.19.0.0"))
    rows = [
        f"  - {{name: e{i}, cidr: {ipaddress.ip_network((base + 4 * i, 30))}, ports: [443, 8443]}}"
        for i in range(n)
    ]
    return "version: 1\nmode: enforce\nallow:\n" + "\n".join(rows) + "\n"


def flat_text(n: int) -> str:
    base = int(ipaddress.ip_address("198.19.0.0"))
    rules = "".join(
        f"-A FLAT -d {ipaddress.ip_network((base + 4 * i, 30))} -p tcp -m multiport "
        "--dports 443,8443 -j ACCEPT\n"
        for i in range(n)
    )
    return f"*filter\n:FLAT - [0:0]\n-I OUTPUT 1 -j FLAT\n{rules}-A FLAT -j REJECT\nCOMMIT\n"


def timed(cmd: list[str], stdin: str | None = None, env: dict | None = None) -> tuple[float, float]:
    """(wall s, cpu s) of one whole process, its waited-for children included."""
    start = os.times()
    proc = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    end = os.times()
    if proc.returncode not in (0, 1):  # status/report exit 1 on an idle namespace is fine
        raise SystemExit(f"{' '.join(cmd[:6])}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    wall = end.elapsed - start.elapsed
    cpu = (end.children_user - start.children_user) + (end.children_system - start.children_system)
    return wall, cpu


class Netns:
    def __init__(self) -> None:
        self.name = f"snb{secrets.token_hex(3)}"

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]


def med(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def row(label: str, ours: tuple[float, float], base: tuple[float, float], goal: float) -> None:
    wall, cpu = ours[0] / base[0], ours[1] / base[1]
    verdict = "met" if min(wall, cpu) <= goal else "MISSED"
    print(
        f"{label:34} {ours[0] * 1000:8.0f} {base[0] * 1000:8.0f} {wall:6.2f}x "
        f"{ours[1] * 1000:8.0f} {base[1] * 1000:8.0f} {cpu:6.2f}x  <= {goal}x {verdict}"
    )


def import_table(argv: list[str], env: dict, netns: Netns, top: int = 8) -> list[tuple[str, int]]:
    out = subprocess.run(
        netns.cmd(PYTHON, "-X", "importtime", SENTINEL, *argv),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    mods = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if not name.startswith("  ") and cumulative.strip().isdigit():  # top level only
                mods.append((name.strip(), int(cumulative)))
    return sorted(mods, key=lambda m: -m[1])[:top]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    package = Path(__file__).resolve().parents[1] / "sentinel"
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(package)], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-bench-cli-"))
    big, flat = tmp / "big.yaml", flat_text(args.entries)
    big.write_text(policy_text(args.entries))
    env = {**os.environ, "SENTINEL_STATE_DIR": str(tmp / "state")}
    res: dict[str, list[tuple[float, float]]] = {}

    def add(key: str, sample: tuple[float, float]) -> None:
        res.setdefault(key, []).append(sample)

    for _ in range(args.runs):  # rounds alternate ours and the baseline
        add("check", timed([SENTINEL, "check", str(big)], env=env))
        add("parse", timed([PYTHON, "-c", PARSE_ONLY, str(big)]))
        with Netns() as ns:
            add("apply", timed(ns.cmd(SENTINEL, "apply", "-p", str(big)), env=env))
        with Netns() as ns:
            add("restore", timed(ns.cmd("iptables-nft-restore", "--noflush"), stdin=flat))
    with Netns() as ns:
        timed(ns.cmd(SENTINEL, "apply", "-p", str(big)), env=env)
        for _ in range(args.runs):
            add("status", timed(ns.cmd(SENTINEL, "status"), env=env))
            add("report", timed(ns.cmd(SENTINEL, "report", "--last", "10m"), env=env))
            add("json", timed([PYTHON, "-c", "import json"]))
            reads = [timed(ns.cmd(*cmd)) for cmd in KERNEL_READS]
            add("reads", (sum(r[0] for r in reads), sum(r[1] for r in reads)))
        tables = {
            name: import_table(argv, env, ns)
            for name, argv in (
                ("status", ["status"]),
                ("report", ["report", "--last", "10m"]),
                ("check", ["check", str(big)]),
            )
        }
    m = {k: med(v) for k, v in res.items()}
    bare = (m["json"][0] + m["reads"][0], m["json"][1] + m["reads"][1])
    print(f"entries {args.entries}, runs {args.runs} (medians; ms)")
    print(f"{'':34} {'ours':>8} {'base':>8} {'wall':>7} {'ours':>8} {'base':>8} {'cpu':>7}")
    row("check vs CSafeLoader parse", m["check"], m["parse"], 1.3)
    row("apply vs iptables-nft-restore flat", m["apply"], m["restore"], 2.0)
    row("status vs import json + reads", m["status"], bare, 2.0)
    row("report --last 10m vs json + reads", m["report"], bare, 2.0)
    print(
        f"(baseline parts: python -c 'import json' {m['json'][0] * 1000:.0f} ms wall, "
        f"kernel reads {m['reads'][0] * 1000:.0f} ms wall)"
    )
    print("\nimport time, top-level modules (cumulative ms):")
    for name, mods in tables.items():
        print(f"  {name:7} " + ", ".join(f"{mod} {us / 1000:.1f}" for mod, us in mods))


if __name__ == "__main__":
    main()
