"""Open attempts waiting to be folded: the one expiry loop the NFLOG monitor (packets of a flow)
and the resolver (refusals of a name) share.

An item is open under a key (a flow, a name) from its first packet; a later one within `window`
seconds of the item's `last` folds into it; an item quiet for longer than that, or the oldest one
when more than `limit` are open, is closed. Least recently seen first, so expiry stops at the
first item still inside the window. What folding adds to an item (a count, query types) and
what closing it emits stay with the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    last: float  # when the item last saw a packet


T = TypeVar("T", bound=Timed)


class OpenItems(Generic[T]):
    def __init__(self, window: float, limit: int) -> None:
        self.window, self.limit = window, limit
        self._items: OrderedDict[Hashable, T] = OrderedDict()  # least recently seen first

    def fold(self, key: Hashable, now: float) -> T | None:
        """The open item of `key` when it saw a packet within the window (its `last` becomes
        `now`); None when there is none or it went quiet (the caller opens a new one)."""
        current = self._items.get(key)
        if current is None or now - current.last > self.window:
            return None
        current.last = now
        self._items.move_to_end(key)
        return current

    def open(self, key: Hashable, item: T) -> list[T]:
        """Open `item` under `key`; the items this closes: the quiet one it replaces, and the
        oldest ones beyond the limit."""
        closed = [self._items.pop(key)] if key in self._items else []
        self._items[key] = item
        while len(self._items) > self.limit:
            closed.append(self._items.popitem(last=False)[1])
        return closed

    def expire(self, now: float, everything: bool = False) -> list[T]:
        """Close the items quiet for longer than the window (all of them with `everything`)."""
        closed = []
        while self._items:
            key, current = next(iter(self._items.items()))
            if not everything and now - current.last <= self.window:
                break
            del self._items[key]
            closed.append(current)
        return closed

    def get(self, key: Hashable) -> T | None:
        return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)
