"""Log lines are JSON, carry a correlation id, are redacted, and reach the state dir's log."""

import io
import json

from sentinel.log import configure, correlation, get_logger
from sentinel.redact import add_secret


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_log_lines_are_redacted_but_keep_our_digests(tmp_path):
    buf = io.StringIO()
    add_secret("https://hooks.example.test/T000/B000/super-secret-path")
    configure("info", buf, log_file=tmp_path / "sentinel.log")
    try:
        with correlation("6c0e4a8e-1f7b-4a53-9a57-0d3f5e0e8e11"):
            get_logger("test").info(
                "tamper",
                detail={
                    "expected": "a" * 64,
                    "found": "b" * 64,
                    "url": "https://hooks.example.test/T000/B000/super-secret-path",
                },
                note="call +1 415 555 0100, write to ops@example.com",
                api_key="sk-abcdefghijklmnopqrstuvwxyz",
                other="c" * 64,
            )
    finally:
        configure("info")
    (line,) = lines(buf)
    assert line["cid"] == "6c0e4a8e-1f7b-4a53-9a57-0d3f5e0e8e11"
    assert line["detail"]["expected"] == "a" * 64 and line["detail"]["found"] == "b" * 64
    text = json.dumps(line)
    for secret in ("super-secret-path", "415 555 0100", "ops@example.com", "sk-abcdef", "c" * 64):
        assert secret not in text
    assert json.loads((tmp_path / "sentinel.log").read_text()) == line  # the bundle reads this


def test_unwritable_log_file_never_stops_logging(tmp_path):
    buf = io.StringIO()
    blocker = tmp_path / "file"
    blocker.write_text("")
    configure("info", buf, log_file=blocker / "sentinel.log")  # parent is a file: cannot open
    try:
        get_logger("test").info("still_here")
    finally:
        configure("info")
    assert lines(buf)[0]["event"] == "still_here"
