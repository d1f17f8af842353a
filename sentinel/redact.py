"""Redaction: secrets, tokens, credentials, e-mail addresses and phone numbers out of any text.

Used on everything that leaves the process (alerts, logs, evidence bundles). Two sources of
truth: patterns for well-known secret shapes, and exact values registered at run time
(`add_secret`), e.g. the webhook URLs and routing keys read from the environment, so a secret
is removed even when it has no recognisable shape.

API: `redact_text(str) -> str`, `redact_obj(obj) -> obj` (dicts/lists/tuples, recursively; values
under secret-looking keys are replaced whole), `hash_user_id(value, key) -> str` (stable keyed
pseudonym: the same id and key always give the same token, without the key it cannot be
reversed or brute-forced from a list of ids). `user_id`/`userId` values, as dict keys
or as `key=value`/`"key": "value"` text, are replaced by that pseudonym everywhere redaction
runs; the key comes from `use_key` (env var or a file in the state dir, never exported).
"""

from __future__ import annotations

import os
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

MASK = "[REDACTED]"
EMAIL_MASK = "[EMAIL]"
PHONE_MASK = "[PHONE]"
_MIN_SECRET_LEN = 6  # shorter registered values would redact ordinary words


class _lazy:  # noqa: N801 - named as the re.compile it stands for
    """A regex compiled on its first use: `sentinel report` imports this module and runs few of
    its ~25 patterns (most are gated out), so compiling them all at import cost ~5 ms of it.
    After the first use its methods are the compiled pattern's own (no call in between)."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._args = (pattern, flags)

    def __getattr__(self, name: str) -> Any:
        compiled = re.compile(*self._args)
        for method in ("sub", "subn", "match", "search", "fullmatch", "findall", "finditer"):
            self.__dict__[method] = getattr(compiled, method)
        return getattr(compiled, name)


# Keys whose values are secrets whatever they look like.
_SECRET_KEY_RE = _lazy(
    r"(pass(word|wd)?|secret|token|api[_-]?key|apikey|auth(orization)?|cookie|session|"
    r"routing[_-]?key|webhook[_-]?url|private[_-]?key|credential|signature)",
    re.IGNORECASE,
)

# (pattern, replacement); order matters: whole URLs and headers before their parts.
_PATTERNS: list[tuple[_lazy, str]] = [
    # PEM private keys
    (
        _lazy(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),
        MASK,
    ),
    # Slack/Discord/PagerDuty-style webhook URLs: the path is the secret
    (
        _lazy(r"https?://hooks\.slack\.com/[^\s\"'<>]+", re.IGNORECASE),
        "https://hooks.slack.com/" + MASK,
    ),
    (
        _lazy(r"(https?://[^\s/\"'<>]*discord(?:app)?\.com/api/webhooks/)[^\s\"'<>]+"),
        r"\1" + MASK,
    ),
    # user:password@ in any URL
    (
        _lazy(r"([a-z][a-z0-9+.-]*://)[^\s/:@\"'<>]+:[^\s/@\"'<>]+@", re.IGNORECASE),
        r"\1" + MASK + "@",
    ),
    # Authorization headers and bearer tokens
    (
        _lazy(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9\-._~+/]{8,}=*", re.IGNORECASE),
        r"\1 " + MASK,
    ),
    # JSON Web Tokens
    (_lazy(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"), MASK),
    # Provider key shapes
    (_lazy(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),  # AWS access key id
    (_lazy(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), MASK),  # Slack tokens
    (_lazy(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), MASK),  # GitHub tokens
    (_lazy(r"\bgithub_pat_[A-Za-z0-9_]{30,}\b"), MASK),
    (_lazy(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"), MASK),  # OpenAI/Anthropic-style
    (_lazy(r"\bAIza[0-9A-Za-z_-]{35}\b"), MASK),  # Google API key
    (_lazy(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b"), MASK),  # Stripe
    # key=value / "key": "value" where the key names a secret
    (
        _lazy(
            r"(?P<k>[\"']?[A-Za-z0-9_-]*(?:pass(?:word|wd)?|secret|token|api[_-]?key|apikey|"
            r"routing[_-]?key|private[_-]?key|credential)[A-Za-z0-9_-]*[\"']?\s*[:=]\s*)"
            r"(?P<v>\"[^\"]*\"|'[^']*'|[^\s,;&\"'}]+)",
            re.IGNORECASE,
        ),
        r"\g<k>" + MASK,
    ),
    # secrets in URL query strings (?sig=..., &key=...)
    (
        _lazy(r"([?&](?:sig|signature|key|code|access_token|auth)=)[^&\s\"'<>]+", re.IGNORECASE),
        r"\1" + MASK,
    ),
    # long hex strings (32+ chars: integration keys, hashes of secrets, session ids)
    (_lazy(r"\b[0-9a-fA-F]{32,}\b"), MASK),
    # e-mail addresses
    (
        _lazy(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        EMAIL_MASK,
    ),
    # phone numbers: +E.164, or 3-3-4 digit groups with separators ("(555) 123-4567",
    # "555.123.4567"); IPv4 addresses never match (their groups have at most 3 digits).
    (
        _lazy(r"(?<![\w.])\+\d{1,3}[\s.-]?(?:\(?\d{1,4}\)?[\s.-]?){2,4}\d{2,4}(?![\w.])"),
        PHONE_MASK,
    ),
    (_lazy(r"(?<![\w.])\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?![\w.])"), PHONE_MASK),
]

# What each pattern above cannot match without (same order): ("s", needles) a substring of
# the text, ("i", needles) a substring of the lower-cased text (case-insensitive patterns; only
# ASCII text is gated, where lower() is what IGNORECASE compares), ("len", n) n characters.
# A pattern is skipped when its gate fails: most event text (host names, executables) then
# runs two or three of the patterns instead of all of them, with the same result.
_GATES: tuple[tuple[str, Any], ...] = (
    ("s", ("-----BEGIN ",)),  # PEM
    ("i", ("hooks.slack.com/",)),
    ("s", ("/api/webhooks/",)),  # Discord
    ("s", ("://",)),  # user:password@
    ("i", ("bearer", "basic", "token")),
    ("s", ("eyJ",)),  # JWT
    ("s", ("AKIA", "ASIA")),
    ("s", ("xox",)),
    ("s", ("gh",)),
    ("s", ("github_pat_",)),
    ("s", ("sk-",)),
    ("s", ("AIza",)),
    ("s", ("_live_", "_test_")),  # Stripe
    ("s", (":", "=")),  # key=value / "key": "value"
    ("s", ("=",)),  # query strings
    ("len", 32),  # long hex
    ("s", ("@",)),  # e-mail
    ("s", ("+",)),  # +E.164
    ("len", 12),  # 3-3-4 digit groups
)
assert len(_GATES) == len(_PATTERNS)


# (pattern, replacement, needles or None, lower-cased?, shortest match) in one row each
_GATED = tuple(
    (pattern, replacement, None if how == "len" else arg, how == "i", arg if how == "len" else 0)
    for (pattern, replacement), (how, arg) in zip(_PATTERNS, _GATES, strict=True)
)


# user ids: `user_id=42`, `"userId": "abc"` become a stable keyed pseudonym u_<hex>
# (not `uid`: that is a Unix uid the kernel vouches for, which the evidence needs as it is)
_USER_ID_KEY_RE = _lazy(r"^(?:user[_-]?id|userid)$", re.IGNORECASE)
_USER_ID_TEXT_RE = _lazy(
    r"(?P<k>(?<![A-Za-z0-9])(?:user[_-]?id|userid)[\"']?\s*[:=]\s*)"
    # quoted: the whole quoted value; bare: up to a separator (a dot, slash or colon ends it,
    # so `user_id=42.example.org` and `user_id=42/app.py` both give 42's pseudonym)
    r"(?:(?P<q>[\"'])(?P<qv>[^\"'\n]+)(?P=q)|(?P<v>[^\s,;&\"'}\]./:]+))",
    re.IGNORECASE,
)
_PSEUDONYM_RE = _lazy(r"^u_[0-9a-f]{24}$")
KEY_ENV = "SENTINEL_REDACT_KEY"
KEY_FILE = "redact.key"

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_user_key: bytes | None = None


def _token() -> bytes:
    """A new random key: `secrets.token_hex(32)`'s bytes (os.urandom), without importing
    secrets (and through it hmac and OpenSSL's hashlib: ~5 ms of a report's start-up)."""
    return os.urandom(32).hex().encode()


def add_secret(value: str | None) -> None:
    """Register a value (e.g. a webhook URL read from the environment) to be removed everywhere."""
    global _secrets
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        if value not in _secrets:
            # longest first, so a URL is removed before a key that is part of it
            _secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))


def use_key(state_dir: Path | None, create: bool) -> None:
    """Set the user-id hashing key: $SENTINEL_REDACT_KEY, else `redact.key` in the state dir
    (generated there once, mode 0600, when `create`; the daemon does, evidence commands only
    read it). Without either, a key for this process only: pseudonyms are still stable within
    one output, and nothing is written. The key is never logged, reported or bundled."""
    global _user_key
    env = os.environ.get(KEY_ENV)
    if env:
        _user_key = env.encode()
        return
    path = state_dir / KEY_FILE if state_dir else None
    try:
        if path is not None and path.exists():
            _user_key = path.read_bytes().strip() or None
        elif path is not None and create:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = _token()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key + b"\n")
            _user_key = key
    except OSError:
        _user_key = None  # unreadable/unwritable: the per-process key below
    if _user_key is None:
        _user_key = _token()


def _pseudonym(value: str) -> str:
    global _user_key
    if _PSEUDONYM_RE.match(value):
        return value  # already hashed (an event redacted before it was stored)
    if _user_key is None:
        _user_key = _token()
    return hash_user_id(value, _user_key)


def _user_ids(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m["q"]:
            return f"{m['k']}{m['q']}{_pseudonym(m['qv'])}{m['q']}"
        return f"{m['k']}{_pseudonym(m['v'])}"

    return _USER_ID_TEXT_RE.sub(sub, text)


_MEMO_MAX, _MEMO_TEXT = 8192, 256  # entries kept; longest text remembered
_memo: dict[str, tuple[tuple[tuple[str, ...], bytes | None], str]] = {}


def redact_text(text: str) -> str:
    """The text with registered secrets, secret-shaped strings, e-mails and phones masked,
    and user ids replaced by their keyed pseudonym.

    Short texts are remembered with the answer and the secrets and key it was made with (an
    event's layer, kind, protocol and address come again and again: every log line and every
    stored event of a flood runs ~20 patterns over each), so a registered secret or a new key
    is never missed: an answer made before it is not used after it."""
    if not text:
        return text
    if len(text) > _MEMO_TEXT:
        return _redact_text(text)
    state = (_secrets, _user_key)
    hit = _memo.get(text)
    if hit is not None and hit[0] == state:
        return hit[1]
    out = _redact_text(text)
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    _memo[text] = (state, out)
    return out


def _redact_text(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "id" in text.lower():
        text = _user_ids(text)
    lower = text.lower() if text.isascii() else None
    for pattern, replacement, needles, folded, shortest in _GATED:
        if needles is None:
            if len(text) < shortest:
                continue
        elif not folded or lower is not None:  # non-ASCII: IGNORECASE folds, no gate
            hay = lower if folded else text
            for needle in needles:
                if needle in hay:
                    break
            else:
                continue
        text, n = pattern.subn(replacement, text)
        if n:
            lower = text.lower() if text.isascii() else None
    return text


def redact_obj(obj: Any, key: str = "", memo: dict[str, str] | None = None) -> Any:
    """A redacted copy of plain data: dict values under secret-looking keys are masked whole.
    Our own SHA-256 digests under hash keys (`policy_sha256`, a tamper event's `expected`)
    survive: evidence needs them, and a 64-hex value elsewhere is still masked. `memo`
    (a dict the caller keeps for one document) redacts each distinct text once."""
    if obj is None or isinstance(obj, (bool, float)):
        return obj
    if isinstance(obj, (str, int)) and _is_user_id_key(key):
        return _pseudonym(str(obj))
    if isinstance(obj, str):
        if _is_our_digest(key, obj):
            return obj
        if memo is None:
            return redact_text(obj)
        if obj not in memo:
            memo[obj] = redact_text(obj)
        return memo[obj]
    if isinstance(obj, dict):
        return {
            k: (
                MASK
                if isinstance(k, str) and _is_secret_key(k) and v
                else redact_obj(v, str(k), memo)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact_obj(v, key, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact_obj(v, key, memo) for v in obj)
    return obj


_DIGEST_KEY_RE = _lazy(r"(^|_)(sha256|expected|found|kept)$")
_SHA256_RE = _lazy(r"^[0-9a-f]{64}$")


def _is_our_digest(key: str, value: str) -> bool:
    return _is_digest_key(key) and bool(_SHA256_RE.match(value))


# the same few keys come with every event and log line: their verdicts are remembered
@lru_cache(maxsize=2048)
def _is_user_id_key(key: str) -> bool:
    return bool(_USER_ID_KEY_RE.match(key))


@lru_cache(maxsize=2048)
def _is_digest_key(key: str) -> bool:
    return bool(_DIGEST_KEY_RE.search(key))


def hash_user_id(value: str | int, key: str | bytes) -> str:
    """A stable pseudonym for a user id: HMAC-SHA256 with a secret key, 12 bytes, hex."""
    if not key:
        raise ValueError("hash_user_id needs a non-empty key (an unkeyed hash can be reversed)")
    import hashlib
    import hmac

    raw_key = key.encode() if isinstance(key, str) else key
    digest = hmac.new(raw_key, str(value).encode(), hashlib.sha256).hexdigest()
    return f"u_{digest[:24]}"  # 96 bits; shorter than the 32-hex pattern, so it survives redaction


@lru_cache(maxsize=2048)
def _is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY_RE.search(key))
