"""A structlog logger that imports structlog (which imports rich) only when something is logged,
for modules that `status` and `report` read but whose logging only the daemon uses."""

from __future__ import annotations

from typing import Any


class LazyLogger:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import structlog

        return getattr(structlog.get_logger(self._name), attr)


def get_logger(name: str) -> LazyLogger:
    return LazyLogger(name)
