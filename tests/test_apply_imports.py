"""`sentinel apply` (the start-up fast path) imports only what applying needs: no CLI
framework, no DNS library for a policy without host names, no tempfile/shutil/secrets/random
(each of which costs start-up on every apply). Root: a real apply in a fresh namespace."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.netns

NOT_NEEDED = ("typer", "click", "rich", "httpx", "dns", "tempfile", "shutil", "secrets", "random")
CODE = """
import json, sys
sys.argv = ["sentinel", "apply", "-p", sys.argv[1]]
import atexit
atexit.register(lambda: print(json.dumps(sorted(m for m in {names!r} if m in sys.modules))))
from sentinel.entry import main
main()
"""
POLICY = "version: 1\nmode: enforce\nallow:\n" + "".join(
    f"  - {{name: e{i}, cidr: 198.19.{i}.0/24, ports: [443, 8443]}}\n" for i in range(20)
)


def test_apply_imports_nothing_it_does_not_use(topo, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    done = topo.run("app", sys.executable, "-c", CODE.format(names=NOT_NEEDED), str(policy))
    assert done.stdout.splitlines()[0].startswith("applied "), done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
