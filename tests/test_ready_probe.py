"""The k8s startupProbe is the compose gate's readiness, run for real in the app namespace:
it passes only when `sentinel run` wrote this namespace's id to the ready file (everything up)
and `sentinel status` agrees; rules alone (`sentinel apply`), a stopped sentinel or another
namespace's id keep it failing. An unwritable --ready-file is bad input before any apply."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from sentinel.lab.netns import PYTHON
from tests.conftest import RECORDS, policy_text, start, wait_for

pytestmark = pytest.mark.netns
POD = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "mem0-pod.yaml"


def probe(topo) -> bool:
    pod = yaml.safe_load(POD.read_text())
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "sentinel")
    state = os.environ["SENTINEL_STATE_DIR"]
    script = sidecar["startupProbe"]["exec"]["command"][2].replace("/var/lib/sentinel", state)
    env = {
        "SENTINEL_STATE_DIR": state,
        "PATH": f"{Path(PYTHON).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    return topo.run("app", "sh", "-c", script, env=env, check=False).returncode == 0


def test_startup_probe_passes_only_when_the_gate_would_open(topo, tmp_path):
    topo.start_dns_server(RECORDS, tmp_path, ttl=30)
    state = Path(os.environ["SENTINEL_STATE_DIR"])
    ready = state / "ready"
    env = {"SENTINEL_STATE_DIR": str(state)}
    (tmp_path / "policy.yaml").write_text(policy_text())
    assert (
        topo.sentinel("apply", "--policy", str(tmp_path / "policy.yaml"), env=env).returncode == 0
    )
    assert topo.sentinel("status", env=env).returncode == 0  # rules alone: status passes...
    assert not probe(topo)  # ...the probe does not (no sentinel run is up)
    outside = topo.run("outside", "readlink", "/proc/self/ns/net").stdout
    ready.write_text(outside)  # a stale file from another namespace
    assert not probe(topo)
    s = start(topo, tmp_path, "--ready-file", str(ready))
    assert wait_for(lambda: probe(topo), 20), s.log()
    assert s.stop() == 0
    assert not ready.exists() and not probe(topo)  # rules stay in force, the gate shuts


def test_unwritable_ready_file_is_bad_input_before_any_apply(topo, tmp_path):
    out = topo.sentinel(
        "run",
        "--policy",
        str(Path(__file__).resolve().parents[1] / "policies" / "mem0.yaml"),
        "--ready-file",
        str(tmp_path / "missing" / "ready"),
        env={"SENTINEL_STATE_DIR": os.environ["SENTINEL_STATE_DIR"]},
    )
    assert out.returncode == 2, out
    assert "--ready-file" in out.stderr and "Traceback" not in out.stderr
    assert "SENTINEL" not in topo.run("app", "iptables-nft-save").stdout  # nothing applied
