"""Guard start-up cost in every install form, against the same interpreter without the guard.

    python bench/bench_guard_start.py [--starts 40] [--entries 10000]

Forms (each a fresh `python -c pass` of a clean venv, PYTHONDONTWRITEBYTECODE=1 so that no form
can cache bytecode at run time, as with a read-only mount or a tree the app cannot write):
  wheel        the guard folder as pip installs it from a wheel (bytecode compiled by pip)
  compiled     a folder made with `sentinel guard path --compile` (editable tree, bind mount)
  pth          sentinel_guard.pth + sentinel_guard.py in site-packages, byte-compiled
  source       a bind-mounted folder WITHOUT bytecode (what --compile fixes), for comparison
each with a small allowlist (3 entries) and a 10,000-CIDR one. Rounds alternate the forms; the
median wall-clock and CPU time per start are printed with the cost added over no guard
(goal <= +3 ms). No network traffic; nothing outside a temp directory is written.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sentinel.guard import PTH_FILE, RUNTIME_FILE, guard_path  # noqa: E402
from sentinel.guard.compile import write_allowlist  # noqa: E402
from sentinel.policy.load import load_policy  # noqa: E402

SMALL = """\
version: 1
mode: enforce
allow:
  - {name: api, host: api.test, ports: [8080], protocol: tcp}
  - {name: lan, cidr: 198.18.7.0/24, ports: [443]}
"""


def big_policy(n: int) -> str:
    base = int(ipaddress.ip_address("198.19.0.0"))
    rows = "".join(
        f"  - {{name: e{i}, cidr: {ipaddress.ip_network((base + 4 * i, 30))}, ports: [443]}}\n"
        for i in range(n)
    )
    return "version: 1\nmode: enforce\nallow:\n" + rows


def start(python: str, env: dict) -> tuple[float, float]:
    """(wall s, cpu s) of one start; getrusage has microsecond resolution (os.times: 10 ms)."""
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([python, "-c", "pass"], env=env, check=True, timeout=60)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=40)
    ap.add_argument("--entries", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-guard-start-") as tmpdir:
        tmp = Path(tmpdir)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
        python = str(tmp / "venv" / "bin" / "python")
        purelib = Path(
            subprocess.run(
                [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        # the forms
        wheel_dir = tmp / "wheel"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "-w",
                str(wheel_dir),
                str(ROOT),
            ],
            check=True,
        )
        target = tmp / "installed"
        wheel = next(wheel_dir.glob("*.whl"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                str(wheel),
            ],
            check=True,
        )
        forms: dict[str, dict[str, str]] = {
            "wheel": {"PYTHONPATH": str(target / "sentinel" / "guard" / "pythonpath")}
        }
        compiled, source = tmp / "compiled", tmp / "source"
        for folder in (compiled, source):
            shutil.copytree(guard_path(), folder, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([python, "-m", "compileall", "-q", str(compiled)], check=True)
        forms["compiled"] = {"PYTHONPATH": str(compiled)}
        forms["source"] = {"PYTHONPATH": str(source)}
        pth_venv = tmp / "pthvenv"
        subprocess.run([base, "-m", "venv", "--without-pip", str(pth_venv)], check=True)
        pth_python = str(pth_venv / "bin" / "python")
        pth_site = Path(str(purelib).replace(str(tmp / "venv"), str(pth_venv)))
        shutil.copy(PTH_FILE, pth_site)
        shutil.copy(RUNTIME_FILE, pth_site)
        subprocess.run(
            [pth_python, "-m", "compileall", "-q", str(pth_site / RUNTIME_FILE.name)], check=True
        )
        forms["pth"] = {}
        # the allowlists
        clean_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "PYTHON"))
        }
        clean_env["PYTHONDONTWRITEBYTECODE"] = "1"
        lists = {}
        for label, text in (("small", SMALL), (f"{args.entries}", big_policy(args.entries))):
            policy = tmp / f"policy-{label}.yaml"
            policy.write_text(text)
            state = tmp / f"state-{label}"
            write_allowlist(load_policy(policy), {"api.test": ["198.18.0.2"]}, state)
            lists[label] = {
                "SENTINEL_POLICY": str(policy),
                "SENTINEL_STATE_DIR": str(state),
                "SENTINEL_GUARD": "enforce",
                "SENTINEL_GUARD_SOCKET": str(tmp / "absent.sock"),
            }
        variants: dict[str, tuple[str, dict]] = {"none": (python, clean_env)}
        for label, list_env in lists.items():
            for form, form_env in forms.items():
                exe = pth_python if form == "pth" else python
                variants[f"{form}/{label}"] = (exe, {**clean_env, **list_env, **form_env})
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for exe, env in variants.values():
            start(exe, env)  # warm the page cache
        for _ in range(args.starts):
            for name, (exe, env) in variants.items():
                samples[name].append(start(exe, env))
        med = {
            k: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
            for k, v in samples.items()
        }
        none = med["none"]
        print(f"python {sys.version.split()[0]}, {args.starts} starts per variant, medians")
        print(
            f"{'variant':18} {'wall ms':>8} {'added':>7} {'cpu ms':>8} {'added':>7}  goal <= +3 ms"
        )
        for name, (wall, cpu) in med.items():
            added_w, added_c = (wall - none[0]) * 1e3, (cpu - none[1]) * 1e3
            verdict = "" if name == "none" else ("met" if min(added_w, added_c) <= 3 else "MISSED")
            print(
                f"{name:18} {wall * 1e3:8.1f} {added_w:+7.1f} {cpu * 1e3:8.1f} {added_c:+7.1f}  {verdict}"
            )


if __name__ == "__main__":
    main()
