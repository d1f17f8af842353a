"""Structured JSON logs for every part of the sentinel (structlog), one line per event.

Every log line carries a correlation id (`cid`): the one bound for the current unit of work
(`with correlation(event.id): ...`, so a DNS refusal, its event and its alert share one id), or
a fresh one when nothing is bound.
"""

from __future__ import annotations

import atexit
import contextvars
import datetime
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog

from sentinel.errors import BadInput

_configured = False
_level = logging.INFO  # the configured threshold (the structlog chain filters on it too)
_output: Any = None  # where lines go: the `_Tee`, or the stream given to `configure`


# the correlation id bound by `correlation()`: one ContextVar of our own, read by one processor
# (structlog's bound_contextvars/merge_contextvars walk the whole context on every bind and every
# line: ~70 us per event in a flood, issue 17)
_CID: contextvars.ContextVar[str | None] = contextvars.ContextVar("sentinel_cid", default=None)


def _add_cid(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    if "cid" not in event:
        event["cid"] = _CID.get() or str(uuid.uuid4())
    return event


_PLAIN = {"cid", "event", "level", "timestamp", "component", "event_id"}


def _redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Nothing secret reaches a log line: secrets, tokens, e-mails and phones are masked."""
    from sentinel.redact import redact_obj  # local: keeps `import sentinel.log` light

    return {k: v if k in _PLAIN else redact_obj(v, k) for k, v in event.items()}


class _Tee:
    """stderr plus an append-only file in the state directory (the evidence bundle reads
    `*.log` there); the file is rotated once at `max_bytes` so it cannot fill the disk.

    Lines are written by a thread of their own, gathered for up to `FLUSH_EVERY` s: a flood of
    events (one log line each) must not wait on two write system calls per line, each a
    release and re-acquisition of the GIL (issue 17). At most `MAX_PENDING` lines wait: past
    that the caller writes them itself. `close()` (at exit and on re-configuration) writes what
    is left, in order."""

    FLUSH_EVERY, MAX_PENDING = 0.02, 5000

    def __init__(self, stream: TextIO, path: Path, max_bytes: int = 50 << 20) -> None:
        self.stream, self.path, self.max_bytes = stream, path, max_bytes
        self.file: TextIO | None = None
        self.size = 0  # bytes in the file: counted, since `tell()` on a text file is slow
        self.lock = threading.Lock()  # the pending lines
        self.order = threading.Lock()  # one writer at a time, so lines keep their order
        self.pending: list[str] = []
        self.lines = 0  # lines in `pending` (a batch from the bus is one string of many)
        self.wake = threading.Event()
        self.busy = False  # the writer drains every FLUSH_EVERY: no one needs to wake it
        self.thread: threading.Thread | None = None
        atexit.register(self.close)

    def write(self, text: str, lines: int = 1) -> int:
        with self.lock:
            self.pending.append(text)
            self.lines += lines
            backlog = self.lines
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
                self.thread.start()
            idle, self.busy = not self.busy, True
        if backlog >= self.MAX_PENDING:
            self._drain()
        elif idle:  # only an idle writer is woken (set() wakes a thread: ~1 ms here, issue 17)
            self.wake.set()
        return len(text)

    def flush(self) -> None:
        pass  # structlog flushes after every line: the writer thread does, once per batch

    def close(self) -> None:
        self._drain()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            while True:  # busy: drain every FLUSH_EVERY until a round finds nothing
                time.sleep(self.FLUSH_EVERY)  # let a burst gather into one write
                self._drain()
                with self.lock:
                    if not self.pending:
                        self.busy = False  # the next write wakes us
                        break

    def _drain(self) -> None:
        with self.order:
            with self.lock:
                lines, self.pending, self.lines = self.pending, [], 0
            if not lines:
                return
            text = "".join(lines)
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stderr: the file still gets the lines
            self._to_file(text)

    def _to_file(self, text: str) -> None:
        try:
            if self.file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "a")  # noqa: SIM115
                self.size = self.file.tell()
            self.file.write(text)
            self.file.flush()
            self.size += len(text)  # characters: the lines are ASCII JSON
            if self.size > self.max_bytes:
                self.file.close()
                os.replace(self.path, self.path.with_suffix(".log.1"))
                self.file = None
        except OSError:
            pass  # a full or read-only disk must not stop the sentinel; stderr still has it


_tee: _Tee | None = None


def configure(
    level: str = "info", stream: TextIO | None = None, log_file: Path | None = None
) -> None:
    """JSON lines to stderr (stdout belongs to command output), and to `log_file` if given.
    Safe to call more than once."""
    global _configured, _tee
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise BadInput(f"log level {level!r} is not one of: debug, info, warning, error")
    if _tee is not None:
        _tee.close()  # what the previous configuration gathered is written first
    _tee = _Tee(stream or sys.stderr, log_file) if log_file else None
    output = _tee or stream or sys.stderr
    global _level, _output
    _level, _output = levels[level.upper()], output
    structlog.configure(
        processors=[
            _add_cid,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(sort_keys=True, default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levels[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(output),  # one write() a line
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(component: str) -> Any:
    if not _configured:
        configure()
    # a lazy proxy, not .bind(): module-level loggers are made at import, before `configure`
    # (the state-dir log file of `sentinel run`); a bound logger would keep the old output
    return structlog.get_logger(component=component)


_UTC = datetime.UTC
_dumps = json.JSONEncoder(sort_keys=True, default=str).encode  # the JSONRenderer's settings


def info_redacted(component: str, event: str, fields: dict[str, Any]) -> None:
    """One info line whose `fields` (a dict of the caller's, filled in here) are already
    redacted: the event bus redacts each event once, and its log line and stored row share that
    text. The same line the structlog chain makes (cid, level, UTC timestamp, sorted JSON keys),
    without its per-line bind and five processor calls (~100 us an event in a flood, issue 17)."""
    if _level > logging.INFO:
        return
    if not _configured:
        configure()
    fields["component"], fields["event"], fields["level"] = component, event, "info"
    if "cid" not in fields:
        fields["cid"] = _CID.get() or str(uuid.uuid4())
    now = datetime.datetime.now(tz=_UTC).isoformat()
    fields["timestamp"] = now.replace("+00:00", "Z")
    line = _dumps(fields) + "\n"
    out = _output
    if isinstance(out, _Tee):
        out.write(line)  # the writer thread flushes
        return
    out.write(line)  # one write a line, as structlog's WriteLogger: lines never interleave
    out.flush()


def info_enabled() -> bool:
    return _level <= logging.INFO


def write_lines(text: str, count: int) -> None:
    """`count` finished info lines (each ending in a newline) in one write, as `info_redacted`
    writes one (sentinel/run/eventlines.py makes them for a batch of events)."""
    if _level > logging.INFO:
        return
    if not _configured:
        configure()
    out = _output
    if isinstance(out, _Tee):
        out.write(text, count)  # the writer thread flushes
        return
    out.write(text)
    out.flush()


@contextmanager
def correlation(cid: str) -> Iterator[None]:
    """Bind `cid` to every log line emitted inside the block (thread- and task-local)."""
    token = _CID.set(cid)
    try:
        yield
    finally:
        _CID.reset(token)
