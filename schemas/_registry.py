"""The released versions of the lineage event schema, as shipped in the package.

Every ``avro/lineage_event.v<N>.avsc`` file is a released contract: events written
with it may sit on the topic (or in a dead-letter table) for as long as anyone
keeps them, so the decoder keeps every version and none is ever edited.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from fastavro.schema import to_parsing_canonical_form

from ._fingerprint import fingerprint_bytes

#: First two bytes of every Avro single-object encoded message.
MARKER: Final = b"\xc3\x01"
_FILE_NAME: Final = re.compile(r"lineage_event\.v([1-9][0-9]*)\.avsc")


@dataclass(frozen=True, kw_only=True)
class Release:
    """One released schema version."""

    version: int
    schema: dict[str, Any]  # as written in the file; never mutated
    # The schema our codec compiles: `schema` without logicalType attributes. The
    # codec converts no logical type anyway (decode returns int micros); stripping
    # makes that explicit and gives any other Avro library the same raw shapes.
    codec_schema: dict[str, Any]
    canonical_form: str
    fingerprint: bytes  # 8 bytes, little-endian, as in the header
    header: bytes  # MARKER + fingerprint: the first 10 bytes of every message


def strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` without any ``logicalType`` attribute."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


def _load() -> dict[int, Release]:
    releases: dict[int, Release] = {}
    folder = resources.files("factflow_lineage.schemas").joinpath("avro")
    for entry in folder.iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            continue
        schema = json.loads(entry.read_text(encoding="utf-8"))
        canonical = to_parsing_canonical_form(schema)
        fp = fingerprint_bytes(canonical)
        releases[int(match.group(1))] = Release(
            version=int(match.group(1)),
            schema=schema,
            codec_schema=strip_logical_types(schema),
            canonical_form=canonical,
            fingerprint=fp,
            header=MARKER + fp,
        )
    # Packaging invariants: a gap or a duplicate would silently lose events later.
    if sorted(releases) != list(range(1, len(releases) + 1)):
        raise RuntimeError(f"schema versions must be 1..N, found {sorted(releases)} in {folder}")
    if len({r.fingerprint for r in releases.values()}) != len(releases):
        raise RuntimeError("two released schema versions have the same canonical form")
    return releases


RELEASES: Final = _load()
CURRENT_VERSION: Final = max(RELEASES)


def release(version: int) -> Release:
    """The release ``version``; ValueError if there is none."""
    try:
        return RELEASES[version]
    except (KeyError, TypeError):
        raise ValueError(
            f"no released schema version {version!r} (released: {sorted(RELEASES)})"
        ) from None
