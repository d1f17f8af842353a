"""One error type; only cli.py turns it into an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_VIOLATION = 1  # violation found, failed check, kernel refused
EXIT_BAD_INPUT = 2


class SentinelError(Exception):
    """An error with an exit code and a message meant for a human."""

    def __init__(self, message: str, code: int = EXIT_VIOLATION) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BadInput(SentinelError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_BAD_INPUT)
