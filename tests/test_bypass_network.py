"""Bypass attempts against the network layer (issue 9): each is blocked and nothing reaches the
outside host. One namespace topology for the module, mem0 policy applied once, always deleted."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
from conftest import needs_tools, unavailable

from sentinel.lab.netns import Topology

pytestmark = pytest.mark.netns
OUTSIDE4, OUTSIDE6 = "198.18.5.5", "2001:db8::5"


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    if os.geteuid() != 0:
        unavailable("needs root")
    state = tmp_path_factory.mktemp("state")
    topology = Topology().build()
    try:
        result = topology.sentinel(
            "apply", "--policy", "policies/mem0.yaml", env={"SENTINEL_STATE_DIR": str(state)}
        )
        assert result.returncode == 0, result.stderr
        yield topology
    finally:
        topology.close()


@pytest.fixture(autouse=True)
def nothing_reaches_outside(topo):
    before = topo.outside_packets()
    yield
    assert topo.outside_packets() == before == 0, "a packet reached the outside host"


def py(topo, code: str, *prefix: str, timeout: float = 20):
    """Run Python code inside the app namespace; returns (rc, stdout + stderr)."""
    result = topo.run(
        "app", *prefix, sys.executable, "-c", textwrap.dedent(code), check=False, timeout=timeout
    )
    return result.returncode, result.stdout + result.stderr


CONNECT = """
import socket, sys
family, addr = {family}, {addr!r}
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(1)
try:
    s.connect(addr)
    print("CONNECTED")
except OSError as exc:
    print("BLOCKED", type(exc).__name__)
"""


def outside_link_local(topo) -> str:
    out = topo.run("outside", "ip", "-6", "addr", "show", "dev", "eth0", "scope", "link").stdout
    return out.split("inet6 ")[1].split("/")[0]


@pytest.mark.parametrize(
    "name, family, addr",
    [
        ("ipv4 literal", "socket.AF_INET", (OUTSIDE4, 443)),
        ("ipv6 global", "socket.AF_INET6", (OUTSIDE6, 443)),
        ("ipv4-mapped ipv6", "socket.AF_INET6", ("::ffff:" + OUTSIDE4, 443)),
        ("doh to ip literal", "socket.AF_INET", (OUTSIDE4, 443)),
        ("dns over tls", "socket.AF_INET", (OUTSIDE4, 853)),
        ("allowlisted ip other port", "socket.AF_INET", ("198.18.0.2", 443)),
        ("other ip allowlisted port", "socket.AF_INET", (OUTSIDE4, 11434)),
    ],
)
def test_tcp_routes_are_blocked(topo, name, family, addr):
    rc, out = py(topo, CONNECT.format(family=family, addr=addr))
    assert "BLOCKED" in out, (name, out)


def test_ipv6_link_local_is_blocked(topo):
    addr = (outside_link_local(topo) + "%eth0", 443)
    rc, out = py(topo, CONNECT.format(family="socket.AF_INET6", addr=addr))
    assert "BLOCKED" in out, out


@pytest.mark.parametrize("addr", [(OUTSIDE4, 443), (OUTSIDE6, 443), (OUTSIDE4, 53), (OUTSIDE6, 53)])
def test_udp_quic_and_foreign_dns_never_leave(topo, addr):
    # port 53 is redirected to the sentinel's resolver, anything else is rejected
    rc, out = py(
        topo,
        f"""
        import socket
        s = socket.socket(socket.AF_INET6 if ':' in {addr[0]!r} else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.5)
        for _ in range(3):
            try:
                s.sendto(b"x" * 40, {addr!r})
            except OSError as exc:
                print("BLOCKED", type(exc).__name__)
        try:
            s.recv(64); print("ANSWERED")
        except OSError as exc:
            print("NO ANSWER", type(exc).__name__)
    """,
    )
    assert "ANSWERED" not in out, out


def test_dns_over_tcp_to_foreign_resolver_is_redirected(topo):
    rc, out = py(topo, CONNECT.format(family="socket.AF_INET", addr=(OUTSIDE4, 53)))
    # lands on the sentinel's resolver port (refused here: `apply` alone runs no resolver)
    assert "BLOCKED ConnectionRefusedError" in out, out


def test_icmp_ping_is_blocked(topo):
    result = topo.run("app", "ping", "-c", "2", "-W", "1", OUTSIDE4, check=False)
    assert result.returncode != 0
    result = topo.run("app", "ping", "-6", "-c", "2", "-W", "1", OUTSIDE6, check=False)
    assert result.returncode != 0


def test_raw_socket_is_blocked(topo):
    rc, out = py(
        topo,
        f"""
        import socket, struct
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        src, dst = socket.inet_aton("198.18.0.10"), socket.inet_aton({OUTSIDE4!r})
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, src, dst)
        udp = struct.pack("!HHHH", 40000, 443, 8, 0)
        try:
            s.sendto(header + udp, ({OUTSIDE4!r}, 0)); print("SENT")
        except OSError as exc:
            print("BLOCKED", type(exc).__name__)
    """,
    )
    assert "BLOCKED" in out, out


def test_curl_subprocess_is_blocked(topo):
    needs_tools("curl")
    result = topo.run("app", "curl", "-sS", "-m", "2", f"http://{OUTSIDE4}:443/", check=False)
    assert result.returncode == 7 and "Failed to connect" in result.stderr, (
        result.stderr
    )  # refused at once


def test_ctypes_libc_connect_is_blocked(topo):
    rc, out = py(
        topo,
        f"""
        import ctypes, socket, struct
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
        addr = struct.pack("!HH4s8x", socket.AF_INET, 443, socket.inet_aton({OUTSIDE4!r}))
        addr = struct.pack("=H", socket.AF_INET) + addr[2:]
        rc = libc.connect(fd, ctypes.c_char_p(addr), len(addr))
        print("CONNECTED" if rc == 0 else "BLOCKED errno=%d" % ctypes.get_errno())
    """,
    )
    assert "BLOCKED errno=111" in out, out  # ECONNREFUSED from the REJECT


def test_forked_child_is_blocked(topo):
    rc, out = py(
        topo,
        CONNECT.format(family="socket.AF_INET", addr=(OUTSIDE4, 443)).replace(
            "s = socket.socket",
            "import os\nif os.fork():\n    os.wait(); sys.exit()\ns = socket.socket",
        ),
    )
    assert "BLOCKED" in out, out


DROP_NET_ADMIN = ("capsh", "--drop=cap_net_admin,cap_net_raw", "--")


def test_so_mark_forgery_needs_cap_net_admin(topo, tmp_path):
    needs_tools("capsh")
    code = f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, 36, 0x5e47)
            print("MARK SET")
        except OSError as exc:
            print("MARK REFUSED", type(exc).__name__)
        s.settimeout(1)
        try:
            s.connect(({OUTSIDE4!r}, 443)); print("CONNECTED")
        except OSError as exc:
            print("BLOCKED", type(exc).__name__)
    """
    script = tmp_path / "forge.py"
    script.write_text(textwrap.dedent(code))
    result = topo.run("app", *DROP_NET_ADMIN, "-c", f"{sys.executable} {script}", check=False)
    assert "MARK REFUSED PermissionError" in result.stdout, result.stdout + result.stderr
    assert "BLOCKED" in result.stdout


def test_flushing_rules_needs_cap_net_admin(topo):
    needs_tools("capsh")
    before = _rules(topo)
    sets = topo.run("app", "ipset", "save").stdout
    result = topo.run(
        "app",
        *DROP_NET_ADMIN,
        "-c",
        "iptables-nft -F SENTINEL-OUT; "
        "ipset flush sentinel-allow4; iptables-nft -D OUTPUT -j SENTINEL-OUT",
        check=False,
    )
    assert "Permission denied" in result.stderr or "not permitted" in result.stderr, result.stderr
    assert _rules(topo) == before
    assert topo.run("app", "ipset", "save").stdout == sets


def _rules(topo) -> list[str]:
    """iptables-save without its timestamped comment lines."""
    out = topo.run("app", "iptables-nft-save").stdout.splitlines()
    return [line for line in out if not line.startswith("#")]
