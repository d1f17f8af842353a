"""Structured JSON logs for every part of the sentinel (structlog), one line per event.

Every log line carries a correlation id (`cid`): the one bound for the current unit of work
(`with correlation(event.id): ...`, so a DNS refusal, its event and its alert share one id), or
a fresh one when nothing is bound.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

from .errors import BadInput

_configured = False


def _add_cid(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    event.setdefault("cid", str(uuid.uuid4()))
    return event


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines to stderr (stdout belongs to command output). Safe to call more than once."""
    global _configured
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise BadInput(f"log level {level!r} is not one of: debug, info, warning, error")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_cid,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True, default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levels[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(component: str) -> Any:
    if not _configured:
        configure()
    return structlog.get_logger().bind(component=component)


@contextmanager
def correlation(cid: str) -> Iterator[None]:
    """Bind `cid` to every log line emitted inside the block (thread- and task-local)."""
    with structlog.contextvars.bound_contextvars(cid=cid):
        yield
