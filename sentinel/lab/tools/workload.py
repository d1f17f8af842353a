"""The lab's built-in workload, run inside the guarded app namespace (standard library only,
like the app it stands in for). Prints one JSON line per action:

{"action": "...", "kind": "allowed"|"violation", "ok": bool, "blocked": bool, "error": ...}

Allowed calls: the stand-in upstreams (postgres, neo4j, ollama) by name, --rounds times each.
Violations: an OpenAI-style HTTPS request by name, a telemetry request by name, a TCP connect to
an IP literal, to an IPv6 address, a UDP datagram, and a `curl` subprocess (which an in-process
guard cannot see). Every call has a short timeout; the whole run is bounded.
"""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

ALLOWED = (("postgres", 5432), ("neo4j", 7687), ("neo4j", 7474), ("ollama", 11434))
TIMEOUT = 3.0


def emit(
    action: str, kind: str, target: str, ok: bool, blocked: bool, error: str | None, start: float
) -> None:
    """ok: the call did what it asked; blocked: it was stopped before reaching the host."""
    line = {
        "action": action,
        "kind": kind,
        "target": target,
        "ok": ok,
        "blocked": blocked,
        "error": error,
        "elapsed_s": round(time.monotonic() - start, 4),
    }
    print(json.dumps(line), flush=True)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH}  # EPERM/EACCES: PermissionError


def stopped_before_the_host(exc: BaseException) -> bool:
    """Did the call fail before reaching the destination? A TLS or protocol error after the
    connection was made means the packets got there: that is not "blocked"."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, ssl.SSLError):  # a TLS error needs a peer (its errno is OpenSSL's)
        return False
    if isinstance(exc, socket.gaierror | PermissionError | ConnectionRefusedError | TimeoutError):
        return True  # no address, the guard, a REJECT (RST/ICMP), or silence
    return isinstance(exc, OSError) and exc.errno in _UNREACHABLE


def tcp(action: str, kind: str, host: str, port: int) -> None:
    start = time.monotonic()
    target = f"tcp/{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as s:
            reply = s.recv(64).decode(errors="replace").strip()
        ok = reply.startswith("ok")
        emit(action, kind, target, ok, False, None if ok else f"reply {reply!r}", start)
    except Exception as exc:  # noqa: BLE001 - any failure is the outcome we report
        emit(action, kind, target, False, stopped_before_the_host(exc), _err(exc), start)


def https(action: str, url: str, body: dict) -> None:
    start = time.monotonic()
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-lab-not-real"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            emit(action, "violation", url, True, False, f"HTTP {reply.status}", start)
    except urllib.error.HTTPError as exc:  # an answer from the server: the call got out
        emit(action, "violation", url, False, False, _err(exc), start)
    except Exception as exc:  # noqa: BLE001
        emit(action, "violation", url, False, stopped_before_the_host(exc), _err(exc), start)


def udp(action: str, host: str, port: int) -> None:
    start = time.monotonic()
    target = f"udp/{host}:{port}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.5)
            s.sendto(b"lab datagram", (host, port))
            reply = s.recv(64)
        emit(action, "violation", target, True, False, f"reply {reply[:20]!r}", start)
    except Exception as exc:  # noqa: BLE001 - refused, timed out, or SecurityError
        err = _err(exc)
        emit(action, "violation", target, False, stopped_before_the_host(exc), err, start)


def curl(action: str, url: str) -> None:
    start = time.monotonic()
    exe = shutil.which("curl")
    if exe is None:
        emit(action, "violation", url, False, False, "skipped: curl not installed", start)
        return
    done = subprocess.run(
        [exe, "-sS", "--http0.9", "-m", str(int(TIMEOUT)), "-o", "/dev/null", url],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 5,
    )
    # 6: no address, 7: could not connect, 28: timed out; anything else got there
    blocked = done.returncode in (6, 7, 28)
    err = done.stderr.strip()[:300] or None
    emit(action, "violation", url, done.returncode == 0, blocked, err, start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--outside4", default="198.18.5.5")
    parser.add_argument("--outside6", default="2001:db8::5")
    parser.add_argument("--telemetry", default="us.i.posthog.com")
    args = parser.parse_args()
    for _ in range(max(1, min(args.rounds, 50))):
        for host, port in ALLOWED:
            tcp(f"{host}:{port}", "allowed", host, port)
    https(
        "openai_https_by_name",
        "https://api.openai.com/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "lab"},
    )
    https("telemetry_by_name", f"https://{args.telemetry}/capture/", {"event": "lab"})
    tcp("ip_literal", "violation", args.outside4, 443)
    tcp("ipv6", "violation", args.outside6, 443)
    udp("udp", args.outside4, 443)
    curl("curl_subprocess", f"http://{args.outside4}:80/")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
