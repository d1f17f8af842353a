"""Bring the e2e stack up by hand and keep it up (docs/deploy.md).

    .venv/bin/python tests/e2e/dev.py [--info /tmp/sentinel-e2e.json] [--minutes 50]

Starts the suite's engine (its own netns) and the stack exactly as the suite does, writes
{"ns", "sock", "work", "override"} to --info, and keeps them up until --minutes pass or the
file named "<info>.stop" appears; then tears everything down (engine stopped, netns deleted).
Meanwhile: `SENTINEL_E2E_ATTACH=<info> .venv/bin/python -m pytest tests/e2e/test_b_gates.py`,
or `DOCKER_HOST=unix://<sock> docker-compose -p mem0-sentinel -f deploy/compose.yaml -f
<override> ps`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from e2e import images  # noqa: E402
from e2e.engine import Engine  # noqa: E402
from e2e.harness import Stack  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--info", default="/tmp/sentinel-e2e.json")
    parser.add_argument("--minutes", type=float, default=50)
    args = parser.parse_args()
    info, stop = pathlib.Path(args.info), pathlib.Path(args.info + ".stop")
    stop.unlink(missing_ok=True)
    engine = Engine()
    try:
        engine.start()
        engine.clean()
        images.build_images(engine)
        stack = Stack(engine, pathlib.Path(tempfile.mkdtemp(prefix="e2e-dev-")))
        try:
            stack.up()
            print(stack.wait_healthy(("postgres", "mem0", "sentinel")), flush=True)
            info.write_text(
                json.dumps(
                    {
                        "ns": engine.ns,
                        "sock": str(engine.sock),
                        "work": str(stack.workdir),
                        "override": str(stack.override),
                    }
                )
            )
            print(f"up: {info}; touch {stop} to tear down", flush=True)
            deadline = time.monotonic() + args.minutes * 60
            while time.monotonic() < deadline and not stop.exists():
                time.sleep(1)
        finally:
            stack.down()
    finally:
        engine.stop()
        info.unlink(missing_ok=True)
        print("down", flush=True)


if __name__ == "__main__":
    main()
