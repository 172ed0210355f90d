"""Content hashes of messages: stable, documented, cheap.

A hash is ``"blake2b128:"`` followed by 32 lower-case hex digits: BLAKE2b with a
16-byte digest (RFC 7693) over the message's bytes, where

- ``bytes`` (also ``bytearray`` and ``memoryview``) are hashed as they are,
- ``str`` is hashed as its UTF-8 encoding,
- ``dict``, ``list`` and ``tuple`` are hashed as their canonical JSON: keys sorted,
  no whitespace (separators ``","`` and ``":"``), non-ASCII characters kept as
  UTF-8 (``ensure_ascii=False``), tuples written as lists.

So ``content_hash({"b": 1, "a": "é"})`` equals
``content_hash('{"a":"é","b":1}')`` and ``content_hash('{"a":"é","b":1}'.encode())``,
and anyone can recompute a hash without this library.

The output hash of an invocation is the same algorithm over the concatenation of
its outputs' hash strings (ASCII), in the order the outputs were recorded; an
invocation that recorded no hashed output has none.

BLAKE2b-128 rather than SHA-256: it is faster in CPython's hashlib for the small
messages adapters pass, and 128 bits are ample to tell messages apart (this is a
fingerprint, not a signature).
"""

from __future__ import annotations

import json
from hashlib import blake2b
from typing import Any, Final

PREFIX: Final = "blake2b128:"
DIGEST_SIZE: Final = 16


def content_hash(data: bytes | bytearray | memoryview | str | dict[Any, Any] | list[Any]) -> str:
    """The content hash of a message (see the module docstring for the rules).

    Raises TypeError for other types, for a dict or list holding values that
    JSON cannot represent or nested too deep for it, and for a str with lone
    surrogates (which have no UTF-8 form: what ``os.fsdecode`` makes of a file
    name that is not UTF-8; hash ``os.fsencode(name)`` instead).
    """
    kind = type(data)
    try:
        if kind is bytes:
            raw: bytes | bytearray | memoryview = data  # type: ignore[assignment]
        elif kind is str:
            raw = data.encode("utf-8")  # type: ignore[union-attr]
        elif isinstance(data, bytes | bytearray | memoryview):
            raw = data
        elif isinstance(data, str):
            raw = data.encode("utf-8")
        elif isinstance(data, dict | list | tuple):
            raw = canonical_json(data).encode("utf-8")
        else:
            raise TypeError(
                f"cannot hash a {type(data).__name__}: pass bytes, str, dict or list "
                "(or compute the hash yourself)"
            )
    except UnicodeEncodeError as e:
        raise TypeError(f"cannot hash a str with lone surrogates (no UTF-8 form): {e}") from e
    except RecursionError as e:
        raise TypeError("cannot hash a value nested too deep for canonical JSON") from e
    return PREFIX + blake2b(raw, digest_size=DIGEST_SIZE).hexdigest()


def canonical_json(data: Any) -> str:
    """The canonical JSON text of ``data`` (sorted keys, no whitespace, UTF-8 kept).

    Raises TypeError when ``data`` holds something JSON cannot represent.
    """
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except ValueError as e:  # circular reference
        raise TypeError(str(e)) from e


class OutputHasher:
    """Accumulates output hashes into the invocation's output hash."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = blake2b(digest_size=DIGEST_SIZE)

    def add(self, output_hash: str) -> None:
        try:
            raw = output_hash.encode("ascii")
        except UnicodeEncodeError:
            # A hash string is ASCII; one a caller made up otherwise still counts
            # (its UTF-8 form, lone surrogates passed through) instead of failing.
            raw = output_hash.encode("utf-8", "surrogatepass")
        self._state.update(raw)

    def hexdigest(self) -> str:
        return PREFIX + self._state.hexdigest()


def combine(hashes: list[str]) -> str | None:
    """The output hash of an invocation whose outputs had ``hashes``, in order."""
    if not hashes:
        return None
    state = OutputHasher()
    for value in hashes:
        state.add(value)
    return state.hexdigest()
