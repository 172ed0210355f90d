"""Ids: UUIDv7 for lineage rows and executions, random UUIDs for events.

Why not ``uuid.uuid4()``: it costs ~1.4 us (a getrandom syscall and the UUID
object), and the hot path needs three ids per invocation. A private
``random.Random`` seeded from ``os.urandom`` gives 128 random bits in ~0.1 us.
These ids must be unique, not unguessable, so a non-cryptographic generator is
fine as long as no two processes share its state: it is private (a user's
``random.seed(42)`` cannot touch it) and re-seeded in a forked child.

Lineage and execution ids are UUIDv7 (RFC 9562: 48-bit Unix milliseconds, then
random bits): ids made close in time sort close together, which keeps the
projection's primary-key index appends local instead of scattered.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Final

_generator = random.Random(os.urandom(32))
_bits = _generator.getrandbits
_time_ns = time.time_ns

_V4_CLEAR: Final = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_V4_SET: Final = (0x4 << 76) | (0x2 << 62)
_V7_RANDOM: Final = 0x0FFF_3FFF_FFFF_FFFF_FFFF  # 80 bits minus version and variant
_V7_SET: Final = 0x7000_8000_0000_0000_0000


def _reseed() -> None:
    _generator.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def new_random_id() -> bytes:
    """16 bytes of a random (version 4) UUID."""
    return ((_bits(128) & _V4_CLEAR) | _V4_SET).to_bytes(16)


def new_time_id() -> bytes:
    """16 bytes of a time-ordered (version 7) UUID."""
    return ((_time_ns() // 1_000_000) << 80 | (_bits(80) & _V7_RANDOM) | _V7_SET).to_bytes(16)


# Namespace for ids given as strings that are not UUIDs (see id_bytes): the same
# string always maps to the same id, so the rows of one run still group together.
_NAMESPACE: Final = uuid.UUID("0b6d7c1e-4f3a-5d2b-9c8e-7a6f5e4d3c2b")
_parsed: dict[str, bytes] = {}


def parse_id(value: object) -> tuple[bytes, bool]:
    """The 16 bytes of an id given as UUID, str, or 16 bytes, and whether it had
    to be derived (``uuid5``) from something that is not a UUID."""
    kind = type(value)
    if kind is uuid.UUID:
        return value.bytes, False  # type: ignore[attr-defined]
    if kind is str:
        cached = _parsed.get(value)  # type: ignore[call-overload]
        if cached is not None:
            return cached, False
        try:
            raw = uuid.UUID(value).bytes  # type: ignore[arg-type]
        except ValueError:
            return uuid.uuid5(_NAMESPACE, value).bytes, True  # type: ignore[arg-type]
        if len(_parsed) >= 1024:  # execution ids repeat: a small cache is enough
            _parsed.clear()
        _parsed[value] = raw  # type: ignore[index]
        return raw, False
    if kind is bytes and len(value) == 16:  # type: ignore[arg-type]
        return value, False  # type: ignore[return-value]
    inner = getattr(value, "id", None)  # an Execution, an Invocation
    if type(inner) is uuid.UUID:
        return inner.bytes, False
    if isinstance(value, uuid.UUID):
        return value.bytes, False
    return uuid.uuid5(_NAMESPACE, str(value)).bytes, True


def unprintable_id(value: object) -> bytes:
    """The id of something that cannot be read as an id (its ``str`` raises):
    the UUIDv5 of its type's name, the same for every such value of that type,
    so its rows still group together and never under the nil UUID."""
    kind = type(value)
    return uuid.uuid5(_NAMESPACE, f"<unprintable {kind.__module__}.{kind.__qualname__}>").bytes
