"""The guard inside the namespace topology, with policies/mem0.yaml applied in the app namespace.

One guarded Python runs every client library against every case (batched: one interpreter
start-up for ~60 calls). Ground truth comes from outside the app: the outside host's packet
counter and a DNS sink behind the policy's port-53 redirect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_guard import CHILD_PRELUDE, Collector, pth_venv

from sentinel.guard import guard_path
from sentinel.guard.compile import allowlist_path
from sentinel.guard.receiver import GuardReceiver

pytestmark = pytest.mark.netns
POLICY = Path(__file__).resolve().parents[1] / "policies" / "mem0.yaml"
CASES = {
    "allowed_name": ("ollama", 11434),
    "allowed_ip": ("198.18.0.4", 11434),
    "blocked_name": ("telemetry.example", 443),
    "blocked_ip": ("198.18.5.5", 443),
    "blocked_ip6": ("2001:db8::5", 443),
    "wrong_port": ("ollama", 443),
    "wrong_port_ip": ("198.18.0.4", 443),
}
CLIENTS = r"""
import asyncio, http.client, urllib.request
import aiohttp, httpx, requests, urllib3

CASES = json.loads(sys.argv[1])

def url(host, port):
    return "http://%s:%d/" % ("[%s]" % host if ":" in host else host, port)

GET = b"GET / HTTP/1.0\r\nHost: upstream\r\n\r\n"

def plain_socket(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(3)
    try:
        s.connect((host, port))
        s.sendall(GET)
        return s.recv(64)
    finally:
        s.close()

def create_connection(host, port):
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(GET)
        return s.recv(64)

def use_urllib(host, port):
    return urllib.request.urlopen(url(host, port), timeout=3).status

def use_http_client(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=3)
    conn.request("GET", "/")
    return conn.getresponse().status

def use_requests(host, port):
    return requests.get(url(host, port), timeout=3).status_code

def use_urllib3(host, port):
    return urllib3.PoolManager(retries=False).request("GET", url(host, port), timeout=3).status

def use_httpx(host, port):
    return httpx.get(url(host, port), timeout=3).status_code

async def _httpx_async(host, port):
    async with httpx.AsyncClient(timeout=3) as client:
        return (await client.get(url(host, port))).status_code

async def _aiohttp(host, port):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        async with session.get(url(host, port)) as response:
            return response.status

async def _streams(host, port):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
    try:
        writer.write(GET)
        return await asyncio.wait_for(reader.readline(), 3)
    finally:
        writer.close()

CLIENTS = {
    "socket": plain_socket,
    "create_connection": create_connection,
    "urllib": use_urllib,
    "http.client": use_http_client,
    "requests": use_requests,
    "urllib3": use_urllib3,
    "httpx": use_httpx,
    "httpx_async": lambda h, p: asyncio.run(_httpx_async(h, p)),
    "aiohttp": lambda h, p: asyncio.run(_aiohttp(h, p)),
    "asyncio_streams": lambda h, p: asyncio.run(_streams(h, p)),
}
for client, fn in CLIENTS.items():
    for case, (host, port) in CASES.items():
        RESULTS["%s/%s" % (client, case)] = outcome(lambda: fn(host, port))

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
RESULTS["udp/sendto"] = outcome(lambda: udp.sendto(b"x", ("198.18.5.5", 53)))
RESULTS["udp/allowlisted_host_wrong_proto"] = outcome(lambda: udp.sendto(b"x", ("postgres", 5432)))
RESULTS["status"] = status()
"""

DNS_SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5300))
s.settimeout(0.2)
print("ready", flush=True)
count, deadline = 0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        query, peer = s.recvfrom(2048)
    except TimeoutError:
        continue
    count += 1
    print(count, flush=True)
    s.sendto(query[:2] + bytes([0x81, 0x85]) + query[4:], peer)  # REFUSED, at once
"""


def _read_counts(proc: subprocess.Popen, wait: float) -> int:
    """Latest count the DNS sink printed (non-blocking read with a short wait)."""
    import selectors

    last = 0
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if sel.select(timeout=0.05):
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line)
    return last


def _http_upstream(topo, tmp_path: Path) -> None:
    """Replace the ollama stand-in with a real HTTP server on the same port (dual stack)."""
    for proc in [p for p in topo.procs if "ollama" in p.args and p.poll() is None]:
        proc.kill()
        proc.wait(timeout=10)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("ollama ok\n")
    topo.spawn(
        "ollama", sys.executable, "-m", "http.server", "11434", "--bind", "::",
        "--directory", str(www), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ready = (
        "import socket, time\nend = time.monotonic() + 15\nwhile True:\n"
        "    try:\n        socket.create_connection(('198.18.0.4', 11434), 1).close(); break\n"
        "    except OSError:\n        assert time.monotonic() < end; time.sleep(0.05)\n"
    )
    topo.run("app", sys.executable, "-c", ready, timeout=30)


def _guarded(topo, state_dir: Path, script: Path, python: str, pythonpath: bool = True):
    env = {
        "SENTINEL_POLICY": str(POLICY),
        "SENTINEL_STATE_DIR": str(state_dir),
        "SENTINEL_GUARD": "enforce",
        "RES_OPTIONS": "timeout:1 attempts:1",
    }
    env["PYTHONPATH"] = str(guard_path()) if pythonpath else ""
    return topo.run(
        "app", python, str(script), json.dumps(CASES), env=env, check=False, timeout=120
    )


def test_every_client_is_guarded_in_the_app_namespace(topo, state_dir, tmp_path):
    _http_upstream(topo, tmp_path)
    applied = topo.sentinel("apply", "--policy", str(POLICY))
    assert applied.returncode == 0, applied.stderr
    assert allowlist_path(state_dir).exists()  # apply compiled the guard's allowlist
    sink = topo.spawn("app", sys.executable, "-c", DNS_SINK, "120")
    assert sink.stdout.readline().strip() == "ready"
    collector = Collector()
    script = tmp_path / "clients.py"
    script.write_text(CHILD_PRELUDE + CLIENTS + "\nprint(json.dumps(RESULTS))\n")
    with GuardReceiver(state_dir, collector):
        proc = _guarded(topo, state_dir, script, sys.executable)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        dns_with_guard = _read_counts(sink, 0.5)
        events = collector.wait("egress_attempt", 5 * 10 + 2, timeout=10)
    assert out["status"]["mode"] == "enforce" and not out["status"]["fail_closed"], out["status"]

    clients = sorted({key.split("/")[0] for key in out if "/" in key and key[:3] != "udp"})
    assert len(clients) == 10
    failures = []
    for client in clients:
        for case in CASES:
            got = out[f"{client}/{case}"]
            if case.startswith("allowed"):  # the upstream answered the request
                ok = got.startswith("ok:") and "200" in got
            else:
                ok = got.startswith("security:[Errno 13] sentinel guard:")
            if not ok:
                failures.append((client, case, got))
    assert not failures, json.dumps(failures, indent=1)
    assert out["udp/sendto"].startswith("security:")
    assert out["udp/allowlisted_host_wrong_proto"].startswith("security:")

    # ground truth: nothing reached the outside host, no DNS query left for a blocked name
    assert topo.outside_packets() == 0
    assert dns_with_guard == 0

    # every blocked call reached the sentinel, with the frame of the client code that made it
    blocked = 10 * 5 + 2
    assert len(events) + sum(e.detail["dropped"] for e in events) == blocked
    assert {e.layer for e in events} == {"guard"} and {e.verdict for e in events} == {"blocked"}
    by_name = [e for e in events if e.dst_name == "telemetry.example"]
    assert len(by_name) == 10 and {e.protocol for e in by_name} == {"dns", "tcp"}
    frames = {e.stack for e in events if e.dst_ip == "198.18.5.5"}
    assert any("clients.py" in f and "in plain_socket" in f for f in frames), frames
    assert any("clients.py" in f and "in create_connection" in f for f in frames), frames

    # control: the same lookup without the guard does send a DNS query (the sink works)
    topo.run(
        "app", sys.executable, "-c", "import socket\ntry: socket.getaddrinfo('ctl.example', 1)\n"
        "except OSError: pass", env={"RES_OPTIONS": "timeout:1 attempts:1"}, check=False,
    )  # fmt: skip
    assert _read_counts(sink, 1.0) > 0


def test_pth_loader_guards_a_venv_in_the_app_namespace(topo, state_dir, tmp_path):
    _http_upstream(topo, tmp_path)
    applied = topo.sentinel("apply", "--policy", str(POLICY))
    assert applied.returncode == 0, applied.stderr
    venv = tmp_path / "appvenv"
    pth_venv(venv)
    body = r"""
    import urllib.request
    CASES = json.loads(sys.argv[1])
    def plain(host, port):
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(64)
    for case, (host, port) in CASES.items():
        RESULTS["socket/" + case] = outcome(lambda: plain(host, port))
        target = "[%s]" % host if ":" in host else host
        RESULTS["urllib/" + case] = outcome(
            lambda: urllib.request.urlopen("http://%s:%d/" % (target, port), timeout=3).status)
    RESULTS["origin"] = status()["origin"]
    """
    script = tmp_path / "pth_clients.py"
    script.write_text(CHILD_PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(RESULTS))\n")
    collector = Collector()
    with GuardReceiver(state_dir, collector):
        proc = _guarded(topo, state_dir, script, str(venv / "bin" / "python"), pythonpath=False)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        events = collector.wait("egress_attempt", 10)
    assert out["origin"] == "pth"
    for key, got in out.items():
        if key == "origin":
            continue
        if "allowed" in key:
            assert got.startswith("ok:") and "200" in got, (key, got)
        else:
            assert got.startswith("security:"), (key, got)
    assert len(events) == 10
    assert topo.outside_packets() == 0
    assert os.path.exists(state_dir / "guard" / "allowlist.json")
