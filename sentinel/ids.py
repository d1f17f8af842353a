"""Event ids: time-ordered UUIDs (the version 7 layout) without a system call per id.

An event's id is also its correlation id. The version 7 layout (48 bits of Unix milliseconds,
then 74 random bits) makes the store's primary-key index grow at its right edge instead of
taking a random page for every insert. The random bits come from a PRNG seeded from
`os.urandom` (reseeded in a forked child), not `os.urandom` per id: that system call (~4.6 us)
lets go of the GIL, and in a flood the monitor's thread then waited for the store's or the log
writer's thread to hand it back (py-spy of `sentinel run` under 100,000 attempts in 10 s: ~40%
of the monitor thread's samples, issue 17). An id is a correlation key, never a secret."""

from __future__ import annotations

import os
import random
import time

_rng = random.Random(os.urandom(32))
_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62
_LOW_62 = (1 << 62) - 1


def _reseed() -> None:
    _rng.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)  # a child must not repeat its parent's ids


def new_id() -> str:
    """A time-ordered UUID (version 7 layout) as text."""
    rand = _rng.getrandbits(74)
    value = (
        (time.time_ns() // 1_000_000) << 80
        | _VERSION_7
        | (rand >> 62) << 64
        | _VARIANT
        | (rand & _LOW_62)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
