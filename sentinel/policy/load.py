"""Load and validate a policy file into frozen, typed objects (model.py; checks: validate.py).

Every error names the file, the line and the field: "x.yaml:7: allow[2].ports: 70000 is not a port".
All errors of a file are collected, not just the first, so one `sentinel check` shows them all.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from sentinel.errors import BadInput
from sentinel.policy.model import (  # noqa: F401 - the names callers import from here
    DEFAULT_MARK,
    DEFAULT_NFLOG_GROUP,
    MODES,
    PROTOCOLS,
    SEVERITIES,
    SINKS,
    AlertSettings,
    Allow,
    CanarySettings,
    DnsSettings,
    IPAddress,
    IPNetwork,
    MonitorSettings,
    Policy,
    PolicyError,
    PolicyTest,
    SinkSettings,
)
from sentinel.policy.validate import _Checker
from sentinel.policy.yamlsrc import YamlSyntaxError, load_located


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read policy: {exc.strerror or exc}") from None
    return parse_policy(raw, str(path))


def parse_policy(raw: bytes | str, source: str = "<memory>") -> Policy:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    digest = hashlib.sha256(text.encode()).hexdigest()
    try:
        doc = load_located(text)
    except YamlSyntaxError as exc:
        raise PolicyError(source, [(exc.line, exc.message)]) from None
    checker = _Checker(doc)
    policy = checker.policy(source, digest)
    if checker.problems:
        raise PolicyError(source, checker.problems)
    assert policy is not None
    if checker.warnings:
        notes = tuple(f"{source}:{line}: {' '.join(msg.split())}" for line, msg in checker.warnings)
        policy = replace(policy, warnings=notes)
    return policy
