"""The netdev egress table (`table netdev sentinel`): apply, read back, and the link facts it
is rendered for (`apply_netdev`/`read_netdev` are called only by `netfilter.apply`/`read_state`/
`teardown`). Also the namespace's own networks, for the DNS upstream check (policy.safety)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import TYPE_CHECKING

from sentinel.enforce.kernelstate import NETDEV_TABLE
from sentinel.enforce.toolrun import capture  # reads: no subprocess module (start-up)
from sentinel.errors import SentinelError

if TYPE_CHECKING:
    from sentinel.enforce.render import Link

__all__ = ["NETDEV_TABLE", "apply_netdev", "local_networks", "read_link", "read_netdev"]
_NFT_COUNTER = re.compile(r"counter packets (\d+) bytes (\d+)")


def run(cmd: list[str], stdin: str) -> None:
    import subprocess  # the apply's load of the table (a read needs none: toolrun)

    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SentinelError(f"{cmd[0]} not found: install nftables") from None
    except subprocess.TimeoutExpired:
        raise SentinelError(f"{cmd[0]} did not finish in 60 s") from None
    if done.returncode != 0:
        raise SentinelError(
            f"nft could not load the netdev egress table: {done.stderr.strip() or done.returncode}"
        )


def read_link() -> Link:
    """This namespace's interfaces other than lo, and its IPv6 addresses (for the netdev
    layer). Read from /sys and /proc: no tool, no privilege."""
    from sentinel.enforce.render import Link  # a kernel read (status) needs no dataclasses

    try:
        devices = sorted(d for d in os.listdir("/sys/class/net") if d != "lo")
    except OSError:
        devices = []
    addresses = set()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 6 and parts[5] in devices:
                    addresses.add(str(ipaddress.IPv6Address(bytes.fromhex(parts[0]))))
    except OSError:
        pass
    return Link(tuple(devices), tuple(sorted(addresses)))


def local_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of this namespace's interfaces, lo included (`ip -j addr`: IPv4 has no
    /proc file of its own); [] when unknown. For policy.safety's DNS upstream check."""
    import subprocess

    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    nets = []
    for link in links:
        for info in link.get("addr_info", []):
            try:
                nets.append(
                    ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
                )
            except (KeyError, ValueError):
                pass
    return nets


def apply_netdev(text: str, current: str) -> None:
    """Replace our netdev table in one nft transaction (or delete it when `text` is empty)."""
    if text == current:
        return
    doc = f"table netdev {NETDEV_TABLE}\ndelete table netdev {NETDEV_TABLE}\n"
    run(["nft", "-f", "-"], doc + text)


def read_netdev() -> tuple[str, dict[int, int]]:
    """Our netdev table in Ruleset.netdev's form (unindented, counters blanked), and the
    packets its log rules counted per family."""
    try:
        code, out, _err = capture(["nft", "list", "table", "netdev", NETDEV_TABLE], timeout=60)
    except FileNotFoundError:  # no nft: no table of ours can be there (apply would have failed)
        return "", {}
    except TimeoutError:
        raise SentinelError("nft did not finish in 60 s") from None
    if code != 0:
        return "", {}  # no such table
    lines, counted = [], {4: 0, 6: 0}
    for raw in out.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _NFT_COUNTER.search(line)
        if match and " log " in line:
            family = 6 if "icmpv6" in line or "ether type ip6" in line else 4
            counted[family] += int(match.group(1))
        lines.append(_NFT_COUNTER.sub("counter", line))
    return "\n".join(lines) + "\n", counted
