"""allowlist.marshal (format /4) against truncation and damage: every corrupted file is refused
before anything unmarshals it, fast, with a message naming the file and the cause; none loads.

The corrupted files are loaded by the guard's own loader (`_load` of its private copy, the code
every guarded start runs) in one child interpreter, bounded in time (subprocess timeout) and in
memory (RLIMIT_AS), with `marshal.loads` counted: a regression that unmarshals a damaged file
(before /4: a minute of CPU, or gigabytes, for three flipped bytes) fails here instead of
stalling. Guarded starts on such files: test_guard.py::test_enforce_fails_closed_*.
"""

from __future__ import annotations

import ipaddress
import json
import marshal
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from test_guard import PINS, POLICY, guard_env, needs_root, spawn_child, write_policy

from sentinel.guard import GUARD_CHECK_MOD, GUARD_FORMAT, GUARD_MAGIC, PYTHONPATH_DIR
from sentinel.guard.compile import frame_guard_payload, guard_allowlist_path, write_allowlist
from sentinel.policy.load import load_policy

HEAD = len(GUARD_MAGIC) + 18  # the format line and the header line
CAUSES = ("is empty", "is truncated", "is damaged", "is format", "has an unknown format")


def many_cidrs(n: int) -> str:
    """n allowlisted /30 CIDRs in 198.19.0.0/16, as bench/bench_guard_common.big_policy."""
    base = int(ipaddress.ip_address("198.19.0.0"))
    rows = "".join(
        f"  - {{name: e{i}, cidr: {ipaddress.ip_network((base + 4 * i, 30))}, ports: [443]}}\n"
        for i in range(n)
    )
    return "version: 1\nmode: enforce\nallow:\n" + rows


# Loads every file named on stdin with the guard's loader; one JSON line per file.
CHILD = """
import json, marshal, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a huge allocation fails, fast
calls = [0]
real_loads = marshal.loads
def counted(data):
    calls[0] += 1
    return real_loads(data)
marshal.loads = counted  # what the private copy binds as its _marshal_loads
sys.path.insert(0, sys.argv[1])
import sentinel_guard
core = sentinel_guard._private_copy()
load, LoadError = core["_load"], core["_LoadError"]
out = {"format": core["_FORMAT"], "magic": core["_MAGIC"].decode(), "mod": core["_CHECK_MOD"]}
print(json.dumps(out), flush=True)
for line in sys.stdin:
    policy, allowlist = line.rstrip("\\n").split("\\t")
    before, t0 = calls[0], time.process_time()
    try:
        rules = load({"policy": policy, "allowlist": allowlist}, 1)
        result = {"loaded": True, "entries": rules["entries"]}
    except LoadError as exc:
        result = {"loaded": False, "message": str(exc)}
    except BaseException as exc:
        result = {"loaded": False, "other": "%s: %s" % (type(exc).__name__, exc)}
    result.update(cpu=time.process_time() - t0, unmarshalled=calls[0] - before)
    print(json.dumps(result), flush=True)
"""


def load_all(policy: Path, files: list[Path], timeout: float = 120) -> tuple[dict, list[dict]]:
    """The guard's constants and its verdict on each file (one child interpreter)."""
    stdin = "".join(f"{policy}\t{f}\n" for f in files)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(PYTHONPATH_DIR)],
        input=stdin, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert len(lines) == len(files) + 1, proc.stderr[-3000:]
    return lines[0], lines[1:]


def corruptions(raw: bytes, rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """`count` different damaged copies of raw: truncations, appended bytes, single and scattered
    byte changes (half of the single ones one flipped bit), bursts, changes in the header lines,
    and huge values written into marshal's 4-byte length fields."""
    out: list[tuple[str, bytes]] = []

    def changed(data: bytearray, pos: int, bit: bool = False) -> None:
        data[pos] ^= 1 << rng.randrange(8) if bit else rng.randrange(1, 256)

    # where a marshal type code with a 4-byte length may be (bytes, tuple, list, set, frozenset,
    # str; with or without FLAG_REF): a huge length there made marshal allocate before /4
    codes = set(b"s([<>uaA") | {c | 0x80 for c in b"s([<>uaA"}
    lengths = [i for i in range(HEAD, len(raw) - 4) if raw[i] in codes]
    while len(out) < count:
        kind = rng.choice(("truncate", "extend", "byte", "bit", "scatter", "burst", "header"))
        data = bytearray(raw)
        if kind == "truncate":
            data = data[: rng.randrange(len(raw))]
        elif kind == "extend":
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif kind in ("byte", "bit"):
            changed(data, rng.randrange(len(raw)), kind == "bit")
        elif kind == "scatter":
            for pos in rng.sample(range(len(raw)), rng.randrange(2, 4)):
                changed(data, pos)
        elif kind == "burst":
            start = rng.randrange(len(raw) - 16)
            for pos in range(start, start + rng.randrange(2, 17)):
                changed(data, pos)
        else:
            changed(data, rng.randrange(HEAD), rng.random() < 0.5)
        out.append((kind, bytes(data)))
        if len(out) % 10 == 0 and lengths:  # a type code's length: ~2 GB for marshal to make
            pos = rng.choice(lengths) + 1
            huge = bytearray(raw)
            huge[pos : pos + 4] = rng.randrange(1 << 28, 1 << 31).to_bytes(4, "little")
            out.append(("length", bytes(huge)))
    return [(kind, data) for kind, data in out[:count] if data != raw]


@pytest.fixture(scope="module")
def allowlists(tmp_path_factory) -> dict[str, tuple[Path, bytes]]:
    """label -> (policy, its allowlist.marshal's bytes): the 3-entry policy and 10,000 CIDRs."""
    out = {}
    for label, text in (("small", POLICY), ("big", many_cidrs(10_000))):
        tmp = tmp_path_factory.mktemp(label)
        policy = write_policy(tmp, text)
        write_allowlist(load_policy(policy), PINS, tmp / "state")
        out[label] = (policy, guard_allowlist_path(tmp / "state").read_bytes())
    return out


def test_the_guard_and_the_sentinel_agree_on_the_format(tmp_path, allowlists):
    policy, raw = allowlists["small"]
    path = tmp_path / "allowlist.marshal"
    path.write_bytes(raw)
    consts, [result] = load_all(policy, [path])
    assert consts == {"format": GUARD_FORMAT, "magic": GUARD_MAGIC.decode(), "mod": GUARD_CHECK_MOD}
    assert GUARD_FORMAT == "sentinel-guard-allowlist/4" and GUARD_CHECK_MOD == 2**30 - 35
    assert result["loaded"] and result["entries"] == 3 and result["unmarshalled"] == 1
    payload = raw[HEAD:]
    assert raw == frame_guard_payload(payload)
    assert raw[len(GUARD_MAGIC) : HEAD] == b"%08x %08x\n" % (
        len(payload),
        int.from_bytes(payload, "little") % GUARD_CHECK_MOD,
    )
    assert marshal.loads(payload)["format"] == GUARD_FORMAT


def test_every_truncation_or_damage_is_refused_before_unmarshalling(tmp_path, allowlists):
    rng = random.Random(20261201)  # the same 300 files at every run
    seen, refused = set(), 0
    for label in ("small", "big"):
        policy, raw = allowlists[label]
        intact = tmp_path / f"{label}-intact.marshal"
        intact.write_bytes(raw)
        files, kinds = [intact], ["intact"]
        for i, (kind, data) in enumerate(corruptions(raw, rng, 150)):
            files.append(tmp_path / f"{label}-{i:03d}-{kind}.marshal")
            files[-1].write_bytes(data)
            kinds.append(kind)
        _, verdicts = load_all(policy, files)
        assert verdicts[0]["loaded"], verdicts[0]  # the harness can tell a load: the good file
        for path, verdict in zip(files[1:], verdicts[1:], strict=True):
            assert not verdict["loaded"] and "other" not in verdict, (path.name, verdict)
            message = verdict["message"]
            assert message.startswith(f"allowlist {path} "), (path.name, message)
            assert any(cause in message for cause in CAUSES), (path.name, message)
            assert verdict["unmarshalled"] == 0, (path.name, message)
            assert verdict["cpu"] < 1.0, (path.name, verdict)  # a hang detector, not a speed goal
            refused += 1
        seen.update(kinds)
    assert refused >= 290
    assert seen >= {"truncate", "extend", "byte", "bit", "scatter", "burst", "header", "length"}


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"", "is empty"),
        (GUARD_MAGIC[:10], "is truncated (10 bytes, in its first line)"),
        (GUARD_MAGIC + b"0000", f"is truncated ({len(GUARD_MAGIC) + 4} bytes, in its header)"),
        (b"sentinel-guard-allowlist/3\n\xfb", "is format 'sentinel-guard-allowlist/3'"),
        (b'{"format": "sentinel-guard-allowlist/2"}', "is JSON"),
        (b"\x00\x01garbage", "has an unknown format"),
        (GUARD_MAGIC + b"0x000010 00000000\n" + bytes(16), "is damaged: its header"),
        (GUARD_MAGIC + b"00000010 00000000\n" + bytes(15), "is truncated: its header says 16"),
        (GUARD_MAGIC + b"00000010 00000001\n" + bytes(16), "is damaged: its rules do not match"),
    ],
)
def test_each_cause_is_named(tmp_path, allowlists, data, cause):
    path = tmp_path / "allowlist.marshal"
    path.write_bytes(data)
    _, [verdict] = load_all(allowlists["small"][0], [path])
    assert not verdict["loaded"] and verdict["unmarshalled"] == 0, verdict
    assert verdict["message"].startswith(f"allowlist {path} {cause}"), verdict


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_running_guard_keeps_its_rules_when_a_damaged_file_replaces_them(
    tmp_path, state_dir, damage
):
    needs_root()
    policy = write_policy(tmp_path)
    write_allowlist(load_policy(policy), PINS, state_dir)
    fast = guard_allowlist_path(state_dir)
    flag = tmp_path / "damaged"
    body = f"""
    import os
    RESULTS["before"] = outcome(lambda: connect("198.18.0.2", 8080))
    print("ready", flush=True)
    deadline = time.monotonic() + 10
    while not os.path.exists({str(flag)!r}) and time.monotonic() < deadline:
        time.sleep(0.01)
    while status()["counters"]["reload_rejected"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    RESULTS["status"] = status()
    RESULTS["allowed"] = outcome(lambda: connect("198.18.0.2", 8080))
    RESULTS["refused"] = outcome(lambda: connect("198.18.5.5", 8080))
    """
    proc = spawn_child(tmp_path, body, guard_env(state_dir, policy))
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        raw = fast.read_bytes()
        bad = raw[:-9] if damage == "truncated" else raw[:-9] + bytes([raw[-9] ^ 4]) + raw[-8:]
        tmp = fast.with_name(".damaged.tmp")
        tmp.write_bytes(bad)
        os.replace(tmp, fast)  # a new inode: the guard's next poll reads it
        flag.touch()
        out = json.loads(proc.stdout.readline())
    finally:
        proc.kill() if proc.poll() is None else None
        proc.communicate(timeout=10)
    assert out["status"]["counters"]["reload_rejected"] >= 1, out
    assert out["status"]["generation"] == 1 and not out["status"]["fail_closed"], out
    assert "unreachable" in out["before"].lower() and "unreachable" in out["allowed"].lower(), out
    assert out["refused"].startswith("security:"), out
