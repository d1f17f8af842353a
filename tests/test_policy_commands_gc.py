"""`sentinel check`/`apply` (the start-up fast path, one command per process) read a policy
with the cyclic GC off: no collection starts while 3,000 entries are read; they leave without
the interpreter's teardown, after flushing both streams and running the atexit handlers (the
reports here are atexit handlers). `status`/`report` keep the GC and the normal exit."""

from __future__ import annotations

import json
import subprocess
import sys

BIG = "version: 1\nmode: enforce\nallow:\n" + "".join(
    f"  - {{name: e{i}, cidr: 198.19.{i // 256}.{i % 256}/32, ports: [443, 8443]}}\n"
    for i in range(3000)
)
CODE = """
import gc, json, sys
started = []
gc.callbacks.append(lambda phase, info: phase == "start" and started.append(info["generation"]))
sys.argv = ["sentinel", *sys.argv[1:]]
import atexit
from sentinel.entry import main
before = len(started)  # imports collect as usual; counted: the command itself
atexit.register(lambda: sys.stderr.write(json.dumps({"collections": len(started) - before,
                                                     "enabled": gc.isenabled()}) + "\\n"))
main()
"""


def run(*argv: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(
        [sys.executable, "-c", CODE, *argv], capture_output=True, text=True, timeout=120
    )
    return done, json.loads(done.stderr.strip().splitlines()[-1])


def test_check_of_a_big_policy_starts_no_collection(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(BIG)
    done, gcinfo = run("check", str(path))
    assert done.returncode == 0, done.stderr
    assert "valid, mode=enforce, 3000 allow entries" in done.stdout
    assert gcinfo == {"collections": 0, "enabled": False}


def test_the_same_reading_with_the_gc_on_does_collect(tmp_path):
    """What the switch removes: reading the policy in a process that keeps the GC on."""
    path = tmp_path / "big.yaml"
    path.write_text(BIG)
    code = CODE.replace("from sentinel.entry import main", "from sentinel.policy.load import "
                        "load_policy\nmain = lambda: load_policy(sys.argv[2])")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code, "check", str(path)], capture_output=True, text=True
    )
    gcinfo = json.loads(done.stderr.strip().splitlines()[-1])
    assert gcinfo["enabled"] and gcinfo["collections"] > 0, done.stderr


def test_other_fast_commands_keep_the_gc(tmp_path):
    done, gcinfo = run("status", "--format", "json")
    assert gcinfo["enabled"], done.stderr


def test_a_one_shot_exit_flushes_everything_and_keeps_the_exit_code(tmp_path):
    """Through a pipe (block-buffered stdout): every line arrives, after it what the atexit
    handler wrote, and the exit code is 0."""
    path = tmp_path / "big.yaml"
    path.write_text(BIG.replace("mode: enforce", "mode: audit"))
    code = CODE + "\nraise SystemExit('not reached: the command exits')\n"
    done = subprocess.run(
        [sys.executable, "-c", code, "check", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("valid, mode=audit, 3000 allow entries, 0 tests passed\n")
    assert json.loads(done.stderr.strip().splitlines()[-1])["collections"] == 0
    assert "not reached" not in done.stderr
