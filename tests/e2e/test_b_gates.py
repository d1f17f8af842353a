"""The PRD's Wingman gates against the real stack (scaled to this machine), then the evidence.

Order matters (pytest runs a module top to bottom): preflight, canary, load at 1/4/8, retrieval,
blocked attempts by every layer, alerts, the report into results.json, the evidence bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from e2e import images
from e2e.harness import ALERTS_IP, OUTSIDE_IP, PASSWORDS, ROOT, WEBHOOK_SECRET

WRITES = int(os.environ.get("SENTINEL_E2E_WRITES", "30"))  # per scenario (the PRD asks 500)
SCENARIOS = (1, 4, 8)
URL = "http://127.0.0.1:8888"  # mem0's published port, inside the engine's namespace
LOAD_USER = "e2e-load-user"
STATE: dict = {"results": {}, "stats": {}, "attempts": {}}


def _stats(stack, gate: str) -> None:
    out = stack.engine.docker("stats", "--no-stream", "--format", "{{json .}}").stdout
    STATE["stats"][gate] = [json.loads(line) for line in out.splitlines() if line.strip()]


def _http(stack, method: str, path: str, body: dict | None = None) -> dict:
    code = (
        "import json,sys,urllib.request as u\n"
        "m,url,b=sys.argv[1],sys.argv[2],sys.argv[3]\n"
        "r=u.Request(url,data=(b.encode() if b else None),method=m,"
        "headers={'Content-Type':'application/json'})\n"
        "print(u.urlopen(r,timeout=60).read().decode())\n"
    )
    proc = stack.in_engine(
        [sys.executable, "-c", code, method, URL + path, json.dumps(body) if body else ""],
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _count(stack) -> int:
    # mem0 creates its collection's table on the first write: before that the count is 0
    if stack.psql("SELECT to_regclass('public.memories') IS NOT NULL") != "t":
        return 0
    return int(stack.psql("SELECT count(*) FROM memories"))


def _report(stack, last: str = "10m") -> dict:
    proc = stack.exec(
        "sentinel", "sentinel", "report", "--last", last, "--format", "json", check=False
    )
    return json.loads(proc.stdout)


def _dataset(stack) -> tuple:
    path = stack.workdir / "dataset.jsonl"
    if not path.exists():
        rows = [
            {"user_id": LOAD_USER, "text": f"e2e memory {i}: the user prefers tea no {i}"}
            for i in range(WRITES * len(SCENARIOS))
        ]
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_preflight_images_and_mounts(stack):
    states = stack.wait_healthy(("postgres", "mem0", "sentinel"))
    assert set(states.values()) == {"healthy"}, states
    for service, image in (("mem0", "mem0-fixed:local"), ("sentinel", "sentinel:local")):
        cid = stack.container(service)
        got = stack.engine.docker("inspect", "-f", "{{.Config.Image}}", cid).stdout.strip()
        assert got == image
    # mounts are files (a missing host path would have become an empty directory)
    stack.exec("sentinel", "test", "-f", "/etc/sentinel/policy.yaml")
    stack.exec("mem0", "test", "-f", "/etc/sentinel/policy.yaml")
    stack.exec("mem0", "test", "-f", "/opt/sentinel-guard/sitecustomize.py")
    # the models exist in Ollama (the stand-in), asked from the host side of the engine
    tags = stack.exec(
        "ollama",
        "python",
        "-c",
        "import urllib.request;print(urllib.request.urlopen("
        "'http://127.0.0.1:11434/api/tags').read().decode())",
    ).stdout
    assert "nomic-embed-text" in tags
    # mem0 really runs without capabilities (deploy/compose.yaml: cap_drop ALL)
    caps = stack.exec("mem0", "sh", "-c", "grep CapEff /proc/1/status").stdout.split()[-1]
    assert int(caps, 16) == 0, caps
    STATE["results"]["containers"] = {"healthy": True, "states": states}
    STATE["t0"] = time.time()
    STATE["outside_before"] = stack.outside_counts()
    _stats(stack, "preflight")


def test_canary_one_write_db_plus_one_no_external_call(stack):
    before = _count(stack)
    STATE["db_before"] = before
    reply = _http(
        stack,
        "POST",
        "/memories",
        {"messages": "canary write", "user_id": "e2e-canary", "infer": False},
    )
    assert reply["results"] and reply["results"][0]["id"]
    assert _count(stack) == before + 1
    report = _report(stack)
    assert report["external_calls_last_10m"] == 0
    _stats(stack, "canary")


@pytest.mark.parametrize("concurrency", SCENARIOS)
def test_load_gate(stack, concurrency):
    path, _ = _dataset(stack)
    offset = SCENARIOS.index(concurrency) * WRITES
    before = _count(stack)
    proc = stack.in_engine(
        [
            sys.executable,
            str(images.STACK / "loadgen.py"),
            URL,
            str(path),
            "--concurrency",
            str(concurrency),
            "--offset",
            str(offset),
            "--count",
            str(WRITES),
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    STATE["results"].setdefault("load", {})[f"c{concurrency}"] = result
    _stats(stack, f"load-c{concurrency}")
    assert result["count"] == WRITES and result["error_rate"] == 0, result["errors"]
    assert _count(stack) == before + WRITES


def test_retrieval_by_user_id(stack):
    rows = _http(stack, "GET", f"/memories?user_id={LOAD_USER}&limit={WRITES * 10}")["results"]
    assert len(rows) == WRITES * len(SCENARIOS)
    assert {r["user_id"] for r in rows} == {LOAD_USER}
    assert _http(stack, "GET", "/memories?user_id=e2e-nobody")["results"] == []
    STATE["db_after"] = _count(stack)
    assert STATE["db_after"] == STATE["db_before"] + 1 + WRITES * len(SCENARIOS)
    _stats(stack, "retrieval")


def _nat_ports(stack) -> dict[str, int]:
    nat = stack.exec("sentinel", "iptables-save", "-t", "nat").stdout
    ports = {}
    for line in nat.splitlines():
        if "DOCKER_OUTPUT" in line and "--to-destination 127.0.0.11:" in line:
            proto = "tcp" if "-p tcp" in line else "udp"
            ports[proto] = int(line.rsplit(":", 1)[1])
    return ports


DIRECT_DNS = r"""
import socket, struct, sys
proto, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
        s.sendto(q, ("127.0.0.11", port)); data = s.recv(4096)
    else:
        s = socket.create_connection(("127.0.0.11", port), timeout=3)
        s.sendall(struct.pack("!H", len(q)) + q); data = s.recv(4096)[2:]
    print("answered", data[3] & 0xF)
except OSError as e:
    print("error", type(e).__name__, e.errno)
"""


def test_direct_queries_to_dockers_resolver_do_not_bypass(stack):
    ports = _nat_ports(stack)
    assert set(ports) == {"udp", "tcp"}, ports
    names = {}
    for proto, port in (*ports.items(), ("udp", 53), ("tcp", 53)):
        name = f"e2e-{uuid.uuid4().hex[:12]}.example.org"
        out = stack.exec("mem0", "python", "-I", "-c", DIRECT_DNS, proto, str(port), name).stdout
        names[(proto, port)] = (name, out.strip())
    for (proto, port), (_, out) in names.items():
        if port == 53:  # redirected to the sentinel: refused (REFUSED = rcode 5)
            assert out == "answered 5", (proto, out)
        else:  # Docker's real (DNAT-ed) port: rejected by the kernel
            assert out.startswith("error"), (proto, port, out)
    time.sleep(2)
    seen = {q["name"].rstrip(".") for q in stack.upstream_queries()}
    leaked = [n for n, _ in names.values() if n in seen]
    assert not leaked, leaked
    STATE["attempts"]["direct_dns"] = {f"{p}:{port}": out for (p, port), (_, out) in names.items()}


BLOCKED = r"""
import socket, sys, urllib.request
kind = sys.argv[1]
try:
    if kind == "openai":
        urllib.request.urlopen("https://api.openai.com/v1/models", timeout=5)
    elif kind == "tcp":
        socket.create_connection((sys.argv[2], 443), timeout=5)
    elif kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
        s.sendto(b"x" * 32, (sys.argv[2], 443)); s.recv(100)
    print("CONNECTED")
except Exception as e:
    print("blocked", type(e).__name__)
"""


def test_telemetry_and_openai_attempts_are_blocked_and_counted_by_layer(stack):
    # guarded (PYTHONPATH) like the app: the guard stops the call before any packet
    out = stack.exec("mem0", "python", "-c", BLOCKED, "openai").stdout.strip()
    assert out.startswith("blocked"), out
    # unguarded processes (python -I ignores PYTHONPATH): the kernel layer stops them
    for kind in ("tcp", "udp"):
        out = stack.exec("mem0", "python", "-I", "-c", BLOCKED, kind, OUTSIDE_IP).stdout.strip()
        assert out.startswith("blocked"), (kind, out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = _report(stack)
        dests = {d["destination"]: d for d in report["attempts_by_destination"]}
        layers = report["attempts_by_layer"]
        posthog = [d for k, d in dests.items() if "posthog" in k]
        if posthog and layers.get("netfilter") and layers.get("guard") and layers.get("dns"):
            break
        time.sleep(2)
    assert posthog, dests.keys()  # mem0's own telemetry, left on, was stopped and counted
    assert any("api.openai.com" in k for k in dests), dests.keys()
    assert any(OUTSIDE_IP in k for k in dests), dests.keys()
    assert layers.get("netfilter") and layers.get("guard") and layers.get("dns"), layers
    assert report["external_calls_last_10m"] == 0
    STATE["attempts"]["by_layer"] = layers
    STATE["attempts"]["telemetry"] = {k: d["attempts"] for k, d in dests.items() if "posthog" in k}


def test_outside_saw_zero_packets(stack):
    counts = stack.outside_counts()
    assert counts["ip_packets"] == 0 and counts["arp_requests"] == 0, counts
    STATE["results"]["outside"] = counts


def test_p1_alerts_reached_the_receiver(stack):
    deadline = time.monotonic() + 60
    p1 = []
    while time.monotonic() < deadline:
        got = stack.alerts_received()
        p1 = [a for a in got if "[P1]" in a.get("body", "") or '"P1"' in a.get("body", "")]
        paths = {a["path"] for a in p1}
        if {"/slack", "/webhook"} <= paths:
            break
        time.sleep(2)
    assert {"/slack", "/webhook"} <= {a["path"] for a in p1}, [a["path"] for a in p1]
    STATE["results"]["alerts"] = {
        "p1_received": len(p1),
        "by_path": {p: sum(a["path"] == p for a in p1) for p in paths},
        "receiver": ALERTS_IP,
    }


def test_report_results_json_and_evidence_bundle(stack, artifacts):
    _, dataset_sha = _dataset(stack)
    writes = STATE["results"].get("load", {})
    all_lat = [v for v in writes.values()]
    results = {
        "config": {
            "llm": "ollama/llama3.1 (stand-in)",
            "embedder": "ollama/nomic-embed-text 768d",
            "base_url": "http://ollama:11434",
            "vector_store": "pgvector (TLS, sslmode=require)",
            "mem0ai": "2.2.1",
            "infer": False,
        },
        "writes": {
            "count": sum(v["count"] for v in all_lat) + 1,
            "success": all(v["error_rate"] == 0 for v in all_lat),
            "p50_s": max(v["p50_s"] for v in all_lat),
            "p95_s": max(v["p95_s"] for v in all_lat),
            "p99_s": max(v["p99_s"] for v in all_lat),
            "max_s": max(v["max_s"] for v in all_lat),
            "error_rate": max(v["error_rate"] for v in all_lat),
            "by_concurrency": writes,
        },
        "db": {"before": STATE["db_before"], "after": STATE["db_after"]},
        "containers": STATE["results"]["containers"],
        "outside_packets": STATE["results"]["outside"]["ip_packets"],
        "alerts": STATE["results"].get("alerts"),
        "attempts": STATE["attempts"],
        "dataset_sha256": dataset_sha,
    }
    inside = "/var/lib/sentinel/e2e"
    stack.exec("sentinel", "sh", "-c", f"rm -rf {inside} && mkdir -p {inside}")
    stack.exec("sentinel", "sh", "-c", f"cat > {inside}/results.json", input=json.dumps(results))
    proc = stack.exec(
        "sentinel",
        "sentinel",
        "report",
        "--last",
        "10m",
        "--results",
        f"{inside}/results.json",
        "--bundle",
        f"{inside}/bundle",
        "--format",
        "json",
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr  # exit 1 = a violation
    out = artifacts / "evidence"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cid = stack.container("sentinel")
    stack.engine.docker("cp", f"{cid}:{inside}", str(out))
    final = json.loads((out / "results.json").read_text())
    assert final["sentinel"]["external_calls_last_10m"] == 0
    assert final["sentinel"]["coverage"] == "complete", proc.stdout[-3000:]
    assert final["sentinel"]["attempts_by_layer"].get("guard")
    assert final["db"]["after"] - final["db"]["before"] == 1 + WRITES * len(SCENARIOS)
    _write_evidence(stack, out, final)
    (artifacts / "results.json").write_text(json.dumps(final, indent=2) + "\n")
    check = subprocess.run(
        ["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=out, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _write_evidence(stack, out, final) -> None:
    from sentinel.redact import add_secret, redact_text

    for secret in (*PASSWORDS.values(), WEBHOOK_SECRET):
        add_secret(secret)
    (out / "docker-stats.json").write_text(json.dumps(STATE["stats"], indent=2) + "\n")
    (out / "dataset.sha256").write_text(f"{final['dataset_sha256']}  dataset.jsonl\n")
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    (out / "git-commit.txt").write_text(sha + "\n")
    openapi = json.dumps(_http(stack, "GET", "/openapi.json"), sort_keys=True)
    (out / "openapi.json").write_text(openapi + "\n")
    (out / "openapi.sha256").write_text(hashlib.sha256(openapi.encode()).hexdigest() + "\n")
    logs = redact_text(stack.logs())
    for secret in (*PASSWORDS.values(), WEBHOOK_SECRET):
        assert secret not in logs
    (out / "compose-logs.redacted.txt").write_text(logs)
    names = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != "MANIFEST.sha256"
    )
    (out / "MANIFEST.sha256").write_text(
        "".join(f"{hashlib.sha256((out / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    )
