"""The e2e suite's fixtures: one engine and one stack per session, always torn down."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import pytest
from conftest import unavailable

from e2e import images
from e2e.engine import Engine, EngineError
from e2e.harness import Stack

ARTIFACTS = pathlib.Path(os.environ.get("SENTINEL_E2E_ARTIFACTS", images.ROOT / "e2e-results"))


def pytest_collection_modifyitems(config, items):
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in (
        "dockerd",
        "containerd",
        "runc",
        "docker-compose",
        "debootstrap",
        "ip",
        "unshare",
        "pg_config",
    ):
        if not shutil.which(tool):
            return f"needs {tool}"
    if not os.path.exists("/usr/lib/postgresql/15/bin/pg_config"):
        return "needs postgresql-server-dev-15"
    if not images.PGVECTOR.exists():
        return f"needs the pgvector source at {images.PGVECTOR}"
    return None


def _attached():
    """SENTINEL_E2E_ATTACH=FILE: use a stack already up (docs/deploy.md, by hand); FILE is the
    JSON that tests/e2e/dev.py writes. Nothing is started or torn down then."""
    path = os.environ.get("SENTINEL_E2E_ATTACH")
    return json.loads(pathlib.Path(path).read_text()) if path else None


@pytest.fixture(scope="session")
def engine():
    info = _attached()
    if info:
        yield Engine.attach(info["ns"], pathlib.Path(info["sock"]))
        return
    reason = _missing()
    if reason:
        unavailable(f"e2e: {reason}")
    eng = Engine()
    try:
        try:
            eng.start()
            eng.clean()
        except EngineError as exc:
            unavailable(f"e2e: container engine did not start: {exc}")
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def stack(engine, artifacts):
    info = _attached()
    if info:
        yield Stack(engine, pathlib.Path(info["work"]))
        return
    images.build_images(engine)
    work = pathlib.Path(tempfile.mkdtemp(prefix="e2e-stack-"))
    st = Stack(engine, work)
    try:
        st.up()
        yield st
    finally:
        try:
            (artifacts / "compose.log").write_text(st.logs())
        except Exception:
            pass
        st.down()
        shutil.rmtree(work, ignore_errors=True)
