"""`sentinel status` / `report` answered by the start-up fast path print what the typer CLI
prints (same bytes, same exit codes); anything the small parser does not know goes to typer."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sentinel.entry import parse_fast
from sentinel.evidence.commands import report_json
from sentinel.lab.netns import PYTHON

TYPER = "from sentinel.cli import main; import sys; sys.argv[0] = 'sentinel'; main()"
FAST = "from sentinel.entry import main; import sys; sys.argv[0] = 'sentinel'; main()"


@pytest.mark.parametrize(
    "argv, parsed",
    [
        (["status"], ("status", {})),
        (["status", "--format", "json"], ("status", {"fmt": "json"})),
        (["status", "--format=table"], ("status", {"fmt": "table"})),
        (["report", "--last", "10m", "--bundle", "b"], ("report", {"last": "10m", "bundle": "b"})),
        (["report", "--since=1h", "--until", "5m"], ("report", {"since": "1h", "until": "5m"})),
        (["status", "--help"], None),
        (["status", "--format"], None),
        (["status", "--format", "json", "--format", "table"], None),
        (["report", "--last", "--format"], None),
        (["report", "--lst", "10m"], None),
        (["report", "extra"], None),
        (["check", "x.yaml"], ("check", {"file": "x.yaml"})),
        (["check", "--help"], None),
        (["check", "a", "b"], None),
        (["apply", "-p", "x", "--dry-run"], ("apply", {"policy": "x", "dry_run": True})),
        (["apply", "--pin", "a=1", "--pin=b=2"], ("apply", {"pin": ["a=1", "b=2"]})),
        (["apply", "--backend", "legacy"], ("apply", {"backend": "legacy"})),
        (["apply", "-p=x"], None),
        (["apply", "--dry-run=1"], None),
        (["apply", "--policy", "x", "-p", "y"], None),
        ([], None),
        (["--help"], None),
    ],
)
def test_parse_fast(argv, parsed):
    assert parse_fast(argv) == parsed


def both(topo, *args):
    out = []
    for code in (FAST, TYPER):
        out.append(topo.run("app", PYTHON, "-c", code, *args, check=False))
    return out


@pytest.mark.netns
@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--format", "json"),
        ("status", "--format", "yaml"),
        ("report", "--last", "10m"),
        ("report", "--last", "ten minutes"),
        ("report", "--since", "1000", "--until", "500"),
    ],
)
def test_fast_path_prints_what_typer_prints(topo, args):
    fast, slow = both(topo, *args)
    assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr), (fast, slow)
    if args[0] == "report" and fast.returncode != 2:
        a, b = json.loads(fast.stdout), json.loads(slow.stdout)
        assert a.keys() == b.keys() and a["external_calls"] == b["external_calls"]
    else:
        assert fast.stdout == slow.stdout


POLICY = """\
version: 1
allow:
  - {name: pg, host: postgres, ports: [5432]}
  - {name: lan, cidr: 198.18.0.0/24, ports: [443]}
tests:
  - {to: "postgres:5432", expect: allow}
"""


@pytest.mark.netns
@pytest.mark.parametrize(
    "args",
    [
        ("check", "{good}"),
        ("check", "{bad}"),
        ("check", "{missing}"),
        ("apply", "-p", "{good}", "--dry-run", "--pin", "postgres=198.18.0.2"),
        ("apply", "-p", "{good}", "--dry-run", "--pin", "nope=198.18.0.2"),
        ("apply", "-p", "{good}", "--backend", "iptc"),
        ("apply", "-p", "{bad}"),
    ],
)
def test_fast_check_and_apply_print_what_typer_prints(topo, tmp_path, args):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(POLICY)
    bad.write_text("version: 1\nallow:\n  - {name: x, cidr: 10.0.0.1/8, ports: [1]}\n")
    paths = {"good": good, "bad": bad, "missing": tmp_path / "missing.yaml"}
    args = tuple(a.format(**paths) for a in args)
    fast, slow = both(topo, *args)
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        slow.returncode,
        slow.stdout,
        slow.stderr,
    )
    assert "SENTINEL" not in topo.run("app", "iptables-nft-save").stdout  # nothing applied


def test_status_does_not_import_the_cli_framework():
    code = (
        "import sys; from sentinel.entry import parse_fast; import sentinel.evidence.commands; "
        "import sentinel.evidence.report, sentinel.alerts.outbox; "
        "print(sorted(m for m in ('typer', 'click', 'rich', 'httpx', 'prometheus_client', "
        "'dns', 'yaml', 'structlog') if m in sys.modules))"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


HEAVY = ("typer", "click", "rich", "httpx", "prometheus_client", "dns", "yaml", "structlog")
# what only an apply or the daemon needs: the kernel read path (enforce/kernelread.py) is enough
APPLY_SIDE = (
    "asyncio",
    "tempfile",
    "sentinel.enforce.netfilter",
    "sentinel.enforce.render",
    "sentinel.enforce.ipsetload",
)
ALERTS_SIDE = ("sentinel.alerts.outbox", "sentinel.alerts.model", "sentinel.lazylog")
# what the report reads without: the Event model and the store's writer side (store/events.py
# re-exports them), dataclasses and what they pull in, uuid (platform), secrets (hmac)
STORE_SIDE = (
    "sentinel.store.events",
    "sentinel.store.model",
    "sentinel.store.writer",
    "sentinel.store.sessions",
    "sentinel.store.checkpoint",
    "sentinel.store.rows",
    "sentinel.store.reads",
    "dataclasses",
    "inspect",
    "ast",
    "uuid",
    "platform",
    "secrets",
    "hmac",
)
# the kernel reads run their tools without the subprocess module (enforce/toolrun.py) and hash
# with CPython's own SHA-256, without loading OpenSSL through hashlib (kernelstate._sha256)
TOOLS_SIDE = ("subprocess", "signal", "locale", "hashlib", "_hashlib")
LOADED = (  # argv[1]: the modules to look for when the command exits
    "import atexit, sys; absent = sys.argv.pop(1).split(','); atexit.register(lambda: "
    "sys.stderr.write('LOADED %r\\n' % sorted(m for m in absent if m in sys.modules))); "
)


@pytest.mark.netns
@pytest.mark.parametrize(
    "args, absent",
    [
        (
            ("status",),
            (*HEAVY, *APPLY_SIDE, *STORE_SIDE, *TOOLS_SIDE, "sqlite3"),
        ),
        (
            ("report", "--last", "10m"),
            (*HEAVY, *APPLY_SIDE, *ALERTS_SIDE, *STORE_SIDE, *TOOLS_SIDE),
        ),
    ],
)
def test_status_and_report_run_without_the_daemons_imports(topo, tmp_path, args, absent):
    # run for real over an applied ruleset: every module the command body imports is loaded
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nallow:\n  - {name: lan, cidr: 198.18.0.0/24, ports: [443]}\n")
    topo.run("app", PYTHON, "-c", FAST, "apply", "-p", str(policy))
    done = topo.run("app", PYTHON, "-c", LOADED + FAST, ",".join(absent), *args, check=False)
    assert done.returncode in (0, 1), done.stderr
    assert "LOADED []" in done.stderr, done.stderr


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=4), json_values, max_size=5))
def test_report_json_is_the_same_document(data):
    assert json.loads(report_json(data)) == json.loads(json.dumps(data))
