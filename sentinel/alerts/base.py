"""What every sink is: settings from the policy, secrets from the environment, a renderer."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from sentinel.alerts.model import Alert
from sentinel.policy.load import SinkSettings
from sentinel.redact import add_secret


class SinkNotConfigured(Exception):
    """A sink named in the policy whose environment variable is missing (message names the
    variable, never a value)."""


class Sink:
    kind: ClassVar[str] = ""
    rate: ClassVar[float] = 10.0  # requests per second (token bucket refill)
    burst: ClassVar[float] = 10.0
    handles_resolve: ClassVar[bool] = False  # does a "quiet again" resolve mean anything here?

    def __init__(self, settings: SinkSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self.source = f"sentinel@{socket.gethostname()}"
        self._url = ""  # set by each sink from its environment variable

    @property
    def name(self) -> str:
        return self.kind

    def secret(self, role: str, required: bool = True) -> str | None:
        """The value of the env var the policy names for `role`; registered for redaction."""
        var = self.settings.env.get(role)
        value = self.environ.get(var) if var else None
        if not value:
            if required:
                raise SinkNotConfigured(
                    f"{self.kind}: environment variable {var or '(none named)'} is not set"
                )
            return None
        add_secret(value)
        return value

    @property
    def url(self) -> str:
        return self._url

    def render(self, alert: Alert, dropped: int) -> tuple[bytes, dict[str, str]]:
        """The request body and headers for one alert; `dropped` = alerts lost before it."""
        return to_body(self.payload(alert, dropped)), {"Content-Type": "application/json"}

    def payload(self, alert: Alert, dropped: int) -> dict[str, Any]:
        raise NotImplementedError


def to_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def iso8601(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def dropped_note(dropped: int) -> str:
    if dropped <= 0:
        return ""
    noun = "alert was" if dropped == 1 else "alerts were"
    return f"{dropped} earlier {noun} dropped (outbox full, expired or queue overflow)"
