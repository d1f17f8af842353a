"""The one HTTP client alert deliveries use: marked sockets, no proxies, no retries of its own.

The mark (SO_MARK, policy.mark) is what the ruleset exempts from deny-all; the app cannot set
it without CAP_NET_ADMIN. `trust_env=False`: a proxy from the environment would route alerts
(and the secrets in their URLs) through a host nobody allowlisted.
"""

from __future__ import annotations

import email.utils
import socket
import time
from dataclasses import dataclass

import httpx

from ..redact import redact_text

SO_MARK = getattr(socket, "SO_MARK", 36)  # Linux value; older Pythons lack the constant
DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
MAX_RETRY_AFTER = 900.0  # a Retry-After beyond 15 min is capped: alerts must not stall forever

# outcomes
OK, RETRY, REJECTED = "ok", "retry", "rejected"


def make_client(mark: int | None, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> httpx.Client:
    options = [(socket.SOL_SOCKET, SO_MARK, mark)] if mark else []
    transport = httpx.HTTPTransport(socket_options=options, retries=0)
    return httpx.Client(
        transport=transport, timeout=timeout, trust_env=False, follow_redirects=False
    )


@dataclass(frozen=True)
class Result:
    outcome: str  # ok | retry | rejected
    status: int | None  # HTTP status, None for network errors and timeouts
    detail: str  # short, redacted: safe to log and print
    retry_after: float | None = None  # seconds the server asked us to wait (429/503)
    elapsed: float = 0.0


def post(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> Result:
    """One POST, classified. Never raises for network trouble, never reveals the URL."""
    started = time.monotonic()
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        return Result(RETRY, None, f"timeout ({type(exc).__name__})", None, _since(started))
    except (httpx.TransportError, OSError) as exc:
        return Result(RETRY, None, _safe_error(exc), None, _since(started))
    return classify(response.status_code, response.headers, response.text, _since(started))


def classify(status: int, headers: httpx.Headers | dict, text: str, elapsed: float) -> Result:
    snippet = redact_text(text[:200].strip())
    detail = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if 200 <= status < 300:
        return Result(OK, status, detail, None, elapsed)
    if status == 429 or status >= 500 or status == 408:
        wait = parse_retry_after(headers.get("retry-after")) if status in (429, 503) else None
        return Result(RETRY, status, detail, wait, elapsed)
    return Result(REJECTED, status, detail, None, elapsed)  # 400, 403, 404...: never retried


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped; None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        seconds = when - (time.time() if now is None else now)
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _safe_error(exc: BaseException) -> str:
    # httpx messages can embed the request URL; the URL may be the secret
    return redact_text(f"{type(exc).__name__}: {exc}")[:200]


def _since(started: float) -> float:
    return time.monotonic() - started
