"""Cost of the in-process guard: per call (loopback connect, getaddrinfo, the allowlist decision)
and at interpreter start-up, against no guard and against pytest-socket-style socket patching.

Prints figures; not a test. Every variant runs in its own child interpreter, rounds alternate
between variants, and the fastest round's per-call CPU time (user + system, all threads) is
reported.

    /tmp/venv/bin/python bench/bench_guard.py [--calls 4000] [--rounds 7] [--starts 30]

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sentinel.guard import guard_path  # noqa: E402
from sentinel.guard.compile import write_allowlist  # noqa: E402
from sentinel.policy.load import load_policy  # noqa: E402

POLICY = """\
version: 1
mode: enforce
allow:
  - {name: api, host: api.test, ports: [8080], protocol: tcp}
  - {name: lan, cidr: 198.18.7.0/24, ports: [443]}
"""

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
t = time.process_time()
for _ in range(n):
    once()
print(json.dumps((time.process_time() - t) / n))
"""


def per_call(python: str, what: str, env: dict, calls: int, netns: bool) -> float:
    cmd = [python, "-c", CHILD, what, str(calls)]
    if netns:
        cmd = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def startup(python: str, env: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([python, "-c", "pass"], env=env, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def clean_python(tmp: Path) -> str:
    """A fresh venv without site-packages noise, so start-up differences are the guard's."""
    base = getattr(sys, "_base_executable", sys.executable)
    venv = tmp / "venv"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return str(venv / "bin" / "python")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--starts", type=int, default=30)
    args = parser.parse_args()
    root = os.geteuid() == 0 and shutil.which("unshare") is not None

    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmpdir:
        tmp = Path(tmpdir)
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        state = tmp / "state"
        write_allowlist(load_policy(policy), {"api.test": ["198.18.0.2"]}, state)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "BENCH"))}
        base_env.pop("PYTHONPATH", None)
        guard_env = {
            **base_env,
            "PYTHONPATH": str(guard_path()),
            "SENTINEL_POLICY": str(policy),
            "SENTINEL_STATE_DIR": str(state),
            "SENTINEL_GUARD": "enforce",
        }
        try:
            import pytest_socket  # noqa: F401

            patch_name, patch_setup = "pytest-socket", PYTEST_SOCKET
        except ImportError:
            patch_name, patch_setup = "monkeypatch", MONKEYPATCH
        variants = {
            "none": base_env,
            "guard": guard_env,
            patch_name: {**base_env, "BENCH_SETUP": patch_setup},
            "empty-hook": {**base_env, "BENCH_SETUP": EMPTY_HOOK},
        }
        python = sys.executable
        print(f"python {sys.version.split()[0]}  calls/round {args.calls}  rounds {args.rounds}")
        print(f"{'per call':14} " + " ".join(f"{v:>14}" for v in variants) + "   ratios")
        for what in ("connect", "getaddrinfo", "gai_numeric", "decision"):
            netns = what == "decision"
            if netns and not root:
                print(f"{what:14} skipped (needs root for a private network namespace)")
                continue
            samples: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(args.rounds):
                for name, env in variants.items():
                    if what == "decision" and name == patch_name:
                        continue  # the patch baseline has no allowlist decision to compare
                    samples[name].append(per_call(python, what, env, args.calls, netns))
            # the fastest round: the least disturbed by other load on the machine
            med = {k: min(v) for k, v in samples.items() if v}
            cells = " ".join(
                f"{med[v] * 1e6:>11.2f} us" if v in med else f"{'-':>14}" for v in variants
            )
            ratios = "  ".join(
                f"{v}/none {med[v] / med['none']:.3f}" for v in variants if v in med and v != "none"
            )
            print(f"{what:14} {cells}   {ratios}")

        clean = clean_python(tmp)
        # two copies of the guard: byte-compiled (a normal install) and source only (a
        # read-only tree with PYTHONDONTWRITEBYTECODE: every start compiles the guard)
        compiled, source = tmp / "guard-pyc", tmp / "guard-src"
        shutil.copytree(guard_path(), compiled)
        shutil.copytree(guard_path(), source)
        shutil.rmtree(compiled / "__pycache__", ignore_errors=True)
        shutil.rmtree(source / "__pycache__", ignore_errors=True)
        subprocess.run([clean, "-m", "compileall", "-q", str(compiled)], check=True)
        nopyc = {**base_env, "PYTHONDONTWRITEBYTECODE": "1"}
        startup(clean, base_env, 3)  # warm the page cache
        plain = [startup(clean, base_env, args.starts)]
        with_pyc = startup(clean, {**guard_env, "PYTHONPATH": str(compiled)}, args.starts)
        plain.append(startup(clean, base_env, args.starts))
        no_pyc = startup(clean, {**guard_env, **nopyc, "PYTHONPATH": str(source)}, args.starts)
        plain.append(startup(clean, base_env, args.starts))
        baseline = min(plain)
        print(
            f"start-up (python -c pass, median of {args.starts}, clean venv): "
            f"none {baseline * 1e3:.1f} ms; guard {with_pyc * 1e3:.1f} ms "
            f"(added {(with_pyc - baseline) * 1e3:.1f} ms); guard without .pyc "
            f"{no_pyc * 1e3:.1f} ms (added {(no_pyc - baseline) * 1e3:.1f} ms)"
        )


if __name__ == "__main__":
    main()
