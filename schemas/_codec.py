"""encode and decode: lineage events <-> Avro single-object encoded bytes."""

from __future__ import annotations

import copy
import functools
import struct
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from factflow_lineage.errors import DecodeError, UnknownSchemaError

from ._avro_codegen import generate_reader
from ._avro_schema import InvalidDatum, Reader, Truncated, Writer
from ._avro_write import compile_writer
from ._registry import CURRENT_VERSION, MARKER, RELEASES, release


class EventType(StrEnum):
    """The kind of a lineage event; values are the Avro enum symbols."""

    UNKNOWN = "UNKNOWN"
    INVOCATION_STARTED = "INVOCATION_STARTED"
    INVOCATION_COMPLETED = "INVOCATION_COMPLETED"
    INVOCATION_FAILED = "INVOCATION_FAILED"
    INVOCATION_CANCELLED = "INVOCATION_CANCELLED"
    EXECUTION_STARTED = "EXECUTION_STARTED"
    EXECUTION_FINISHED = "EXECUTION_FINISHED"


class ExecutionStatus(StrEnum):
    """How a pipeline execution ended; values are the Avro enum symbols."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


_NAMESPACE: Final = "io.factflow.lineage"
# event_type -> full name of its payload record. UNKNOWN has none: it only exists
# so that a reader older than the writer has a symbol to map new event types to.
_PAYLOAD_RECORD: Final[dict[str, str]] = {
    EventType.INVOCATION_STARTED: f"{_NAMESPACE}.InvocationStarted",
    EventType.INVOCATION_COMPLETED: f"{_NAMESPACE}.InvocationCompleted",
    EventType.INVOCATION_FAILED: f"{_NAMESPACE}.InvocationFailed",
    EventType.INVOCATION_CANCELLED: f"{_NAMESPACE}.InvocationCancelled",
    EventType.EXECUTION_STARTED: f"{_NAMESPACE}.ExecutionStarted",
    EventType.EXECUTION_FINISHED: f"{_NAMESPACE}.ExecutionFinished",
}
_EVENT_TYPE_OF: Final = {record: event_type for event_type, record in _PAYLOAD_RECORD.items()}
_HEADER_SIZE: Final = len(MARKER) + 8

_CURRENT_HEADER: Final = RELEASES[CURRENT_VERSION].header
_CURRENT_WRITER: Final = compile_writer(RELEASES[CURRENT_VERSION].codec_schema)
# Fingerprint -> reader of that writer version into the shape of the current
# version. Resolution happens once, here, so every version decodes equally fast.
_READERS: Final[dict[bytes, Reader]] = {
    r.fingerprint: generate_reader(r.codec_schema, RELEASES[CURRENT_VERSION].codec_schema)
    for r in RELEASES.values()
}


@functools.cache
def _writer(version: int) -> Writer:
    return compile_writer(release(version).codec_schema)


def encode(event: Mapping[str, Any]) -> bytes:
    """Encode ``event`` with the current schema, as an Avro single-object message.

    ``event`` has the raw shape ``decode`` returns: ids as 16 bytes, ``occurred_at``
    as int microseconds, enums as str (or EventType/ExecutionStatus members), and
    ``payload`` as a plain dict with the fields of the record ``event_type`` names.
    Fields with a default in the schema (the replay fields) may be left out.

    Raises ValueError (naming the field) when the event does not fit the schema.
    """
    return _encode(_CURRENT_HEADER, _CURRENT_WRITER, event)


def encode_with(version: int, event: Mapping[str, Any]) -> bytes:
    """Encode ``event`` with the released writer schema ``version`` (for tests and
    tools). Fields that version does not have are dropped."""
    return _encode(release(version).header, _writer(version), event)


def _encode(header: bytes, write: Writer, event: Mapping[str, Any]) -> bytes:
    buf = bytearray(header)
    try:
        record = _PAYLOAD_RECORD.get(event["event_type"])
        if record is None:
            raise InvalidDatum("event_type", f"{event['event_type']!r} has no payload record")
        # The union branch comes from event_type, never from trying the branches in
        # turn: that would take an InvocationCancelled payload for an InvocationCompleted
        # (same shape once a missing optional field counts as null).
        write({**event, "payload": (record, event["payload"])}, buf)
    except InvalidDatum as e:
        raise ValueError(f"invalid lineage event: {e}") from e
    except KeyError as e:
        raise ValueError(f"invalid lineage event: {e.args[0]}: missing") from e
    except (TypeError, AttributeError) as e:  # not a mapping, or an unhashable event_type
        raise ValueError(f"invalid lineage event: {e}") from e
    return bytes(buf)


def decode(data: bytes) -> dict[str, Any]:
    """Decode one Avro single-object message written with any released schema.

    Returns the raw event dict in the shape of the current schema (fields an older
    writer lacked get their defaults). Raises UnknownSchemaError when the message
    names a writer schema that was never released, DecodeError for anything else
    that is not a lineage event, and nothing else.
    """
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
    if data[:2] != MARKER:
        raise DecodeError(
            f"not an Avro single-object message: starts with {data[:2].hex() or 'nothing'}"
        )
    if len(data) < _HEADER_SIZE:
        raise DecodeError(f"truncated: {len(data)} bytes, the header alone has {_HEADER_SIZE}")
    read = _READERS.get(data[2:_HEADER_SIZE])
    if read is None:
        raise UnknownSchemaError(data[2:_HEADER_SIZE])
    try:
        event: dict[str, Any]
        event, end = read(data, _HEADER_SIZE)
    except (IndexError, Truncated, struct.error) as e:
        raise DecodeError(f"truncated event body ({len(data)} bytes)") from e
    except ValueError as e:  # Malformed, UnicodeDecodeError
        raise DecodeError(f"malformed event body: {e}") from e
    if end != len(data):
        raise DecodeError(f"{len(data) - end} unexpected bytes after the event")
    record, payload = event["payload"]
    if _EVENT_TYPE_OF.get(record) != event["event_type"]:
        raise DecodeError(f"event_type {event['event_type']} with a {record} payload")
    event["payload"] = payload
    return event


def writer_schema(version: int) -> dict[str, Any]:
    """The released schema ``version`` as parsed JSON (a copy; ValueError if none)."""
    return copy.deepcopy(release(version).schema)


def fingerprint(version: int) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of schema ``version``, as in the header."""
    return release(version).fingerprint
