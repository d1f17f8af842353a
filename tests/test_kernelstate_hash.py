"""The ruleset hash is the same SHA-256 whether hashlib (OpenSSL) is loaded or CPython's own
builtin is used (`status` and `report` do not import hashlib), and it is the hash of the
documented text: rules per family, the sets' sorted entries, the netdev table."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from sentinel.enforce import kernelstate
from sentinel.enforce.kernelstate import IpSet, ruleset_hash

SETS = [
    IpSet("sentinel-allow6", 6, ("2001:db8::/64,tcp:443",)),
    IpSet("sentinel-allow4", 4, ("198.18.0.2,tcp:5432", "10.0.0.0/8,udp:53")),
]


def test_the_hash_is_the_documented_sha256_with_either_implementation(monkeypatch):
    want = hashlib.sha256(
        b"-A X\n\0-A Y\n\0netdev\0table\n"
        b"\0sentinel-allow4\0" + b"10.0.0.0/8,udp:53\n198.18.0.2,tcp:5432"
        b"\0sentinel-allow6\0" + b"2001:db8::/64,tcp:443"
    ).hexdigest()
    assert ruleset_hash("-A X\n", "-A Y\n", SETS, "table\n") == want  # hashlib loaded here
    monkeypatch.delitem(sys.modules, "hashlib")
    assert "hashlib" not in type(kernelstate._sha256()).__module__
    assert ruleset_hash("-A X\n", "-A Y\n", SETS, "table\n") == want


def test_a_status_process_hashes_without_importing_hashlib():
    code = (
        "import sys; from sentinel.enforce.kernelstate import IpSet, ruleset_hash; "
        "h = ruleset_hash('a', 'b', [IpSet('s', 4, ('x',))]); "
        "print(h, 'hashlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    digest, loaded = out.stdout.split()
    assert loaded == "False"
    assert digest == ruleset_hash("a", "b", [IpSet("s", 4, ("x",))])
