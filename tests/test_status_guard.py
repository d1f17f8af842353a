"""`sentinel status` shows guard_active per guarded process (from the guard receiver)."""

import json
import time

from sentinel.cli import _guard_status


def test_guard_status_per_process(state_dir):
    state_dir.mkdir(parents=True)
    (state_dir / "guard_processes.json").write_text(
        json.dumps(
            {
                "written_at": time.time(),
                "processes": {
                    "101": {
                        "exe": "/usr/bin/python3",
                        "mode": "enforce",
                        "guard_active": True,
                        "fail_closed": False,
                    },
                    "102": {
                        "exe": "/usr/bin/python3",
                        "mode": "enforce",
                        "guard_active": False,
                        "fail_closed": True,
                    },
                },
            }
        )
    )
    status = _guard_status()
    assert status["processes"] == 2 and status["active"] == 1
    assert status["per_process"]["102"]["fail_closed"] is True


def test_stale_receiver_file_means_no_guard_is_active(state_dir):
    state_dir.mkdir(parents=True)
    (state_dir / "guard_processes.json").write_text(
        json.dumps(
            {
                "written_at": time.time() - 3600,
                "processes": {"101": {"exe": "x", "mode": "enforce", "guard_active": True}},
            }
        )
    )
    assert _guard_status()["active"] == 0
