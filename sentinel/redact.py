"""Redaction: secrets, tokens, credentials, e-mail addresses and phone numbers out of any text.

Used on everything that leaves the process (alerts, logs, evidence bundles). Two sources of
truth: patterns for well-known secret shapes, and exact values registered at run time
(`add_secret`), e.g. the webhook URLs and routing keys read from the environment, so a secret
is removed even when it has no recognisable shape.

API: `redact_text(str) -> str`, `redact_obj(obj) -> obj` (dicts/lists/tuples, recursively; values
under secret-looking keys are replaced whole), `hash_user_id(value, key) -> str` (stable keyed
pseudonym: the same id and key always give the same token, without the key it cannot be
reversed or brute-forced from a list of ids).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from typing import Any

MASK = "[REDACTED]"
EMAIL_MASK = "[EMAIL]"
PHONE_MASK = "[PHONE]"
_MIN_SECRET_LEN = 6  # shorter registered values would redact ordinary words

# Keys whose values are secrets whatever they look like.
_SECRET_KEY_RE = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|apikey|auth(orization)?|cookie|session|"
    r"routing[_-]?key|webhook[_-]?url|private[_-]?key|credential|signature)",
    re.IGNORECASE,
)

# (pattern, replacement); order matters: whole URLs and headers before their parts.
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # PEM private keys
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
        ),
        MASK,
    ),
    # Slack/Discord/PagerDuty-style webhook URLs: the path is the secret
    (
        re.compile(r"https?://hooks\.slack\.com/[^\s\"'<>]+", re.IGNORECASE),
        "https://hooks.slack.com/" + MASK,
    ),
    (
        re.compile(r"(https?://[^\s/\"'<>]*discord(?:app)?\.com/api/webhooks/)[^\s\"'<>]+"),
        r"\1" + MASK,
    ),
    # user:password@ in any URL
    (
        re.compile(r"([a-z][a-z0-9+.-]*://)[^\s/:@\"'<>]+:[^\s/@\"'<>]+@", re.IGNORECASE),
        r"\1" + MASK + "@",
    ),
    # Authorization headers and bearer tokens
    (
        re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9\-._~+/]{8,}=*", re.IGNORECASE),
        r"\1 " + MASK,
    ),
    # JSON Web Tokens
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"), MASK),
    # Provider key shapes
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),  # AWS access key id
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), MASK),  # Slack tokens
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), MASK),  # GitHub tokens
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{30,}\b"), MASK),
    (re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"), MASK),  # OpenAI/Anthropic-style
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), MASK),  # Google API key
    (re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b"), MASK),  # Stripe
    # key=value / "key": "value" where the key names a secret
    (
        re.compile(
            r"(?P<k>[\"']?[A-Za-z0-9_-]*(?:pass(?:word|wd)?|secret|token|api[_-]?key|apikey|"
            r"routing[_-]?key|private[_-]?key|credential)[A-Za-z0-9_-]*[\"']?\s*[:=]\s*)"
            r"(?P<v>\"[^\"]*\"|'[^']*'|[^\s,;&\"'}]+)",
            re.IGNORECASE,
        ),
        r"\g<k>" + MASK,
    ),
    # secrets in URL query strings (?sig=..., &key=...)
    (
        re.compile(
            r"([?&](?:sig|signature|key|code|access_token|auth)=)[^&\s\"'<>]+", re.IGNORECASE
        ),
        r"\1" + MASK,
    ),
    # long hex strings (32+ chars: integration keys, hashes of secrets, session ids)
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), MASK),
    # e-mail addresses
    (
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        EMAIL_MASK,
    ),
    # phone numbers: +E.164, or 3-3-4 digit groups with separators ("(555) 123-4567",
    # "555.123.4567"); IPv4 addresses never match (their groups have at most 3 digits).
    (
        re.compile(r"(?<![\w.])\+\d{1,3}[\s.-]?(?:\(?\d{1,4}\)?[\s.-]?){2,4}\d{2,4}(?![\w.])"),
        PHONE_MASK,
    ),
    (re.compile(r"(?<![\w.])\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?![\w.])"), PHONE_MASK),
]

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def add_secret(value: str | None) -> None:
    """Register a value (e.g. a webhook URL read from the environment) to be removed everywhere."""
    global _secrets
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        if value not in _secrets:
            # longest first, so a URL is removed before a key that is part of it
            _secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))


def redact_text(text: str) -> str:
    """The text with registered secrets, secret-shaped strings, e-mails and phones masked."""
    if not text:
        return text
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_obj(obj: Any, key: str = "") -> Any:
    """A redacted copy of plain data: dict values under secret-looking keys are masked whole.
    Our own SHA-256 digests under hash keys (`policy_sha256`, a tamper event's `expected`)
    survive: evidence needs them, and a 64-hex value elsewhere is still masked."""
    if isinstance(obj, str):
        return obj if _is_our_digest(key, obj) else redact_text(obj)
    if isinstance(obj, dict):
        return {
            k: (MASK if isinstance(k, str) and _is_secret_key(k) and v else redact_obj(v, str(k)))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact_obj(v, key) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact_obj(v, key) for v in obj)
    return obj


_DIGEST_KEY_RE = re.compile(r"(^|_)(sha256|expected|found|kept)$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _is_our_digest(key: str, value: str) -> bool:
    return bool(_DIGEST_KEY_RE.search(key) and _SHA256_RE.match(value))


def hash_user_id(value: str | int, key: str | bytes) -> str:
    """A stable pseudonym for a user id: HMAC-SHA256 with a secret key, 12 bytes, hex."""
    if not key:
        raise ValueError("hash_user_id needs a non-empty key (an unkeyed hash can be reversed)")
    raw_key = key.encode() if isinstance(key, str) else key
    digest = hmac.new(raw_key, str(value).encode(), hashlib.sha256).hexdigest()
    return f"u_{digest[:24]}"  # 96 bits; shorter than the 32-hex pattern, so it survives redaction


def _is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY_RE.search(key))
