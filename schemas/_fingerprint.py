"""CRC-64-AVRO, the schema fingerprint of Avro single-object encoding.

Written out from the Avro specification ("Schema Fingerprints") instead of
borrowed from a library, because the fingerprint is part of every message on
the topic: its definition should be readable next to the code that relies on it.
"""

from __future__ import annotations

from typing import Final

#: The fingerprint of the empty byte string, and the polynomial of the CRC.
EMPTY: Final = 0xC15D213AA4D7A795


def _table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_TABLE: Final = _table()


def fingerprint64(data: bytes) -> int:
    """CRC-64-AVRO of ``data`` as an unsigned 64-bit integer."""
    fp = EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint_bytes(canonical_form: str) -> bytes:
    """The 8 fingerprint bytes of a schema's Parsing Canonical Form, as they appear
    in a single-object header: little-endian, like the Java reference implementation."""
    return fingerprint64(canonical_form.encode("utf-8")).to_bytes(8, "little")
