"""Event ids: random version-4 UUIDs without a system call per id.

An event's id is also its correlation id, which alerts and logs carry as a UUIDv4 (the alert
schema's contract, tests/schemas/). `uuid.uuid4()` reads `os.urandom(16)` for every id: ~4.6 us,
and the system call lets go of the GIL, so in a flood the monitor's thread then waited for the
store's or the log writer's thread to hand it back (py-spy of `sentinel run` under 100,000
attempts in 10 s: ~40% of the monitor thread's samples, issue 17). Ids here come from a PRNG
seeded from `os.urandom` (reseeded in a forked child): 122 random bits, as unique as uuid4's;
an id is a correlation key, never a secret."""

from __future__ import annotations

import os
import random

_rng = random.Random(os.urandom(32))
_MASK = ((1 << 128) - 1) ^ (0xF000 << 64) ^ (0xC000 << 48)  # version and variant bits cleared
_BITS = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def _reseed() -> None:
    _rng.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)  # a child must not repeat its parent's ids


def new_id() -> str:
    """A random UUID (version 4) as text, e.g. '1b4e28ba-2fa1-41d2-883f-0016d3cca427'."""
    h = f"{_rng.getrandbits(128) & _MASK | _BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
