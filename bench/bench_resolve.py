"""Pin resolution speed against a real dnsmasq (issue 12): concurrent vs sequential.

    .venv/bin/python bench/bench_resolve.py [--names 1000] [--refresh 100] [--runs 3]

One throwaway network namespace (loopback only, deleted at the end); dnsmasq answers N names
(A + AAAA each) from a hosts file on 127.0.0.1:53. Measured, in the same run:

1. Pin refresh of 100 names: `PinManager.refresh_all` (names in parallel, A and AAAA of each in
   parallel) vs the sequential baseline (one name after another, A then AAAA); median of runs.
2. Start-up resolution of 1,000 allowlisted names, the same two ways.
3. The whole `sentinel apply --dry-run` process with those 1,000 names (load, resolve, render).
4. If the kernel has netem: 1 and 2 again with 1 ms added each way on loopback (a resolver one
   hop away), where waiting, not CPU, is what concurrency saves.

Prints one JSON object; the ratios are sequential / concurrent.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def names(n: int) -> list[str]:
    return [f"svc{i}.internal" for i in range(n)]


def address(i: int) -> tuple[str, str]:
    return f"198.18.{2 + i // 250}.{1 + i % 250}", f"2001:db8::{i + 1:x}"


# --- inside the namespace ------------------------------------------------------------------
def inner(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from sentinel.policy.load import DnsSettings
    from sentinel.resolver.pins import PinManager
    from sentinel.resolver.upstream import Upstream, resolve

    upstream = Upstream("127.0.0.1", 53)
    settings = DnsSettings(min_ttl=30, max_ttl=3600, stale_grace=600)

    def sequential(todo: list[str]) -> float:
        t0 = time.perf_counter()
        for name in todo:
            res = resolve(upstream, name, settings, parallel=False)
            assert len(res.addresses) == 2 and not res.failed, (name, res)
        return time.perf_counter() - t0

    def concurrent(todo: list[str], label: str) -> float:
        pins = PinManager(settings, upstream, todo, lambda _e: None, lambda _p: None)
        t0 = time.perf_counter()
        pins.refresh_all(batch=label == "startup")  # as `run` and `apply` start
        elapsed = time.perf_counter() - t0
        got = pins.pins()
        assert len(got) == len(todo) and all(len(v) == 2 for v in got.values()), len(got)
        return elapsed

    out = {}
    for label, count in (("refresh", args.refresh), ("startup", args.names)):
        todo = names(count)
        seq, con = [], []
        for _ in range(args.runs):  # alternate, so drift hits both alike
            seq.append(sequential(todo))
            con.append(concurrent(todo, label))
        s, c = statistics.median(seq), statistics.median(con)
        out[label] = {
            "names": count,
            "sequential_s": round(s, 4),
            "concurrent_s": round(c, 4),
            "ratio": round(s / c, 2),
            "runs_sequential_s": [round(x, 4) for x in seq],
            "runs_concurrent_s": [round(x, 4) for x in con],
        }
    print(json.dumps(out))


# --- outside -------------------------------------------------------------------------------
READY = """
import sys, time, dns.message, dns.query
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    try:
        r = dns.query.udp(dns.message.make_query("svc0.internal.", "A"), "127.0.0.1", timeout=0.3)
        if r.answer:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(1)
"""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed:\n{out.stderr[-3000:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--refresh", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
        return
    ns = f"bnr{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix=f"{ns}-"))
    work.chmod(0o755)
    dnsmasq = None
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        hosts = work / "hosts"
        lines = []
        for i, name in enumerate(names(args.names)):
            v4, v6 = address(i)
            lines += [f"{v4} {name}", f"{v6} {name}"]
        hosts.write_text("\n".join(lines) + "\n")
        hosts.chmod(0o644)
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
             "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}", "--listen-address=127.0.0.1",
             "--bind-interfaces", "--port=53", "--user=nobody", "--pid-file=",
             "--local-ttl=300", "--cache-size=10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ready = sh("ip", "netns", "exec", ns, PYTHON, "-c", READY, check=False)
        if ready.returncode != 0:
            raise SystemExit(f"dnsmasq did not answer: {ready.stderr[-500:]}")
        base = [PYTHON, __file__, "--inner", "--names", str(args.names)]
        base += ["--refresh", str(args.refresh), "--runs", str(args.runs)]
        result = {"loopback": json.loads(sh("ip", "netns", "exec", ns, *base).stdout)}
        result["apply_dry_run_1000"] = whole_apply(ns, work, args.names)
        netem = sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root",
                   "netem", "delay", "1ms", check=False)  # fmt: skip
        if netem.returncode == 0:
            result["loopback_plus_1ms_each_way"] = json.loads(
                sh("ip", "netns", "exec", ns, *base).stdout
            )
        else:
            result["loopback_plus_1ms_each_way"] = f"skipped: netem: {netem.stderr.strip()}"
        print(json.dumps(result, indent=2))
    finally:
        if dnsmasq is not None:
            dnsmasq.kill()
            dnsmasq.wait(timeout=5)
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(work, ignore_errors=True)


def whole_apply(ns: str, work: Path, count: int) -> dict:
    """`sentinel apply --dry-run` with `count` names, as the operator runs it (whole process)."""
    policy = work / "policy.yaml"
    entries = [f"  - {{name: s{i}, host: {n}, ports: [5432]}}" for i, n in enumerate(names(count))]
    policy.write_text(
        "version: 1\nmode: enforce\nallow:\n" + "\n".join(entries) + "\n"
        "dns: {upstream: 127.0.0.1, min_ttl: 30s}\n"
    )
    exe = str(Path(PYTHON).with_name("sentinel"))
    env = {**os.environ, "SENTINEL_STATE_DIR": str(work / "state")}
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run(
            ["ip", "netns", "exec", ns, exe, "apply", "--dry-run", "--policy", str(policy)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        runs.append(time.perf_counter() - t0)
        if out.returncode != 0 or "warning" in out.stderr:
            raise SystemExit(f"apply --dry-run failed: {out.stderr[-2000:]}")
    return {"names": count, "median_s": round(statistics.median(runs), 3),
            "runs_s": [round(r, 3) for r in runs]}  # fmt: skip


if __name__ == "__main__":
    main()
