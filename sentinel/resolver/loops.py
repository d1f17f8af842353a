"""The sentinel's own upstream queries, so that one coming back to it is recognised as a loop.

Under Docker the upstream (`auto` = resolv.conf = 127.0.0.11) is Docker's embedded resolver. It
answers container names itself, but forwards any other name to its external servers *from the
app's network namespace*, on a socket without the sentinel's mark, so the ruleset's DNS
redirect hands that query straight back to the sentinel. Relayed again (audit mode, or an
allowlisted name outside Docker's network), it loops until timeouts end it, and every turn
used to be counted as another attempt (626 "attempts" in 90 s from a few app queries).

Each query the sentinel sends upstream is registered here by (id, question) while it is in
flight; the resolver answers a query with the same id and question SERVFAIL at once, counts it
as a loop (not as an attempt: the app's query was counted when it arrived) and never relays it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_inflight: Counter[bytes] = Counter()


def query_key(wire: bytes) -> bytes | None:
    """id + the question (name lower-cased, type, class), or None when it does not parse."""
    if len(wire) < 17:
        return None
    pos = 12
    for _ in range(128):
        if pos >= len(wire):
            return None
        length = wire[pos]
        if length == 0:
            end = pos + 5
            return wire[:2] + wire[12:end].lower() if end <= len(wire) else None
        if length & 0xC0:  # a compression pointer cannot start a question name
            return None
        pos += 1 + length
    return None


def hold(wire: bytes) -> None:
    """Register `wire` as in flight upstream (release it when answered or given up)."""
    key = query_key(wire)
    if key is not None:
        with _lock:
            _inflight[key] += 1


def release(wire: bytes) -> None:
    key = query_key(wire)
    if key is None:
        return
    with _lock:
        _inflight[key] -= 1
        if _inflight[key] <= 0:
            del _inflight[key]


@contextmanager
def own_query(wire: bytes) -> Iterator[None]:
    """Mark `wire` as the sentinel's own upstream query for as long as the block runs."""
    hold(wire)
    try:
        yield
    finally:
        release(wire)


def is_own(wire: bytes) -> bool:
    """Is this query one the sentinel itself has in flight upstream (it came back)?"""
    key = query_key(wire)
    if key is None:
        return False
    with _lock:
        return _inflight.get(key, 0) > 0
