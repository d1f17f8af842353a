"""Apply time and per-packet cost: sentinel (ipset + constant rules) vs flat iptables-restore.

Run as root: `python bench/bench_apply.py`. Everything happens in namespaces this script
creates (unique prefix) and deletes; traffic only goes between them on 198.18.0.0/24.
Prints figures; it is not a test.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sentinel.enforce import netfilter
from sentinel.enforce.render import render_rules
from sentinel.policy.load import parse_policy

SIZES = (10, 1_000, 10_000)
PACKETS = 20_000
REPEAT = 3


def sh(*cmd: str, stdin: str | None = None) -> str:
    return subprocess.run(cmd, input=stdin, check=True, capture_output=True, text=True).stdout


def policy_text(n: int) -> str:
    # the last entry is the peer the packet test sends to, so a linear scan walks them all
    hosts = [str(ipaddress.ip_address("198.19.0.1") + i) for i in range(n - 1)] + ["198.18.0.2"]
    lines = "".join(f"  - {{name: e{i}, host: {h}, ports: [9000]}}\n" for i, h in enumerate(hosts))
    return "version: 1\nallow:\n" + lines.replace(
        "ports: [9000]}\n", "ports: [9000], protocol: udp}\n"
    )


def flat_text(n: int) -> str:
    hosts = [str(ipaddress.ip_address("198.19.0.1") + i) for i in range(n - 1)] + ["198.18.0.2"]
    rules = "".join(f"-A FLAT -d {h}/32 -p udp -m udp --dport 9000 -j ACCEPT\n" for h in hosts)
    return f"*filter\n:FLAT - [0:0]\n-I OUTPUT 1 -j FLAT\n{rules}-A FLAT -j REJECT\nCOMMIT\n"


def inner(mode: str, n: int) -> None:
    """Runs inside the app namespace: one measurement, printed as 'seconds'."""
    if mode == "sentinel":
        ruleset = render_rules(parse_policy(policy_text(n)), {})
        start = time.perf_counter()
        netfilter.apply(ruleset)
    else:
        text = flat_text(n)
        start = time.perf_counter()
        sh(f"{mode}-restore", "--noflush", stdin=text)
    apply_s = time.perf_counter() - start
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 32
    start = time.perf_counter()
    for _ in range(PACKETS):  # bounded: PACKETS datagrams, no loop on time
        sock.sendto(payload, ("198.18.0.2", 9000))
    per_packet_us = (time.perf_counter() - start) / PACKETS * 1e6
    print(f"{apply_s:.6f} {per_packet_us:.3f}")


def measure(mode: str, n: int) -> tuple[float, float]:
    prefix = f"snb{secrets.token_hex(3)}"
    app, peer = f"{prefix}-app", f"{prefix}-peer"
    try:
        sh("ip", "netns", "add", app)
        sh("ip", "netns", "add", peer)
        sh(
            "ip",
            "-n",
            app,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer,
        )
        for ns, addr in ((app, "198.18.0.1/24"), (peer, "198.18.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        out = sh("ip", "netns", "exec", app, sys.executable, __file__, "--inner", mode, str(n))
        apply_s, per_packet = out.split()
        return float(apply_s), float(per_packet)
    finally:
        for ns in (app, peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> None:
    print(f"{'entries':>8} {'backend':>22} {'apply ms (median)':>18} {'us/packet':>10}")
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for n in SIZES:
        for mode in ("sentinel", "iptables-nft", "iptables-legacy"):
            runs = [measure(mode, n) for _ in range(REPEAT)]
            apply_ms = statistics.median(r[0] for r in runs) * 1000
            per_packet = statistics.median(r[1] for r in runs)
            results[(mode, n)] = (apply_ms, per_packet)
            label = {
                "sentinel": "sentinel (ipset+nft)",
                "iptables-nft": "flat iptables-nft-restore",
                "iptables-legacy": "flat legacy-restore",
            }[mode]
            print(f"{n:>8} {label:>22} {apply_ms:>18.1f} {per_packet:>10.2f}")
    big = SIZES[-1]
    ratio = results[("sentinel", big)][0] / results[("iptables-nft", big)][0]
    print(f"\nratio sentinel/iptables-nft-restore apply at {big}: {ratio:.2f}x (goal <= 2x)")
    growth = results[("sentinel", big)][1] / results[("sentinel", SIZES[0])][1]
    flat_growth = results[("iptables-nft", big)][1] / results[("iptables-nft", SIZES[0])][1]
    print(
        f"per-packet cost growth {SIZES[0]} -> {big} entries: sentinel {growth:.2f}x, "
        f"flat nft rules {flat_growth:.2f}x"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--inner":
        inner(sys.argv[2], int(sys.argv[3]))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        main()
