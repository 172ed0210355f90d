r"""The Avro contract of the lineage event stream, and its codec.

Every message on the topic is one event in Avro single-object encoding:
``b"\xC3\x01"``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's Parsing Canonical Form, then the Avro binary body. The schemas live in
``avro/lineage_event.v<N>.avsc``; the record is ``io.factflow.lineage.LineageEvent``.

Events are plain dicts in the raw Avro shape (ids as 16 bytes, ``occurred_at`` as
int microseconds since the epoch, enums as str); ``payload`` holds the fields of
the record that ``event_type`` names:

>>> from uuid import UUID
>>> data = encode({
...     "event_id": UUID(int=1).bytes,
...     "event_type": EventType.EXECUTION_FINISHED,
...     "occurred_at": 1_700_000_000_000_000,
...     "producer_id": UUID(int=2).bytes,
...     "sequence": 7,
...     "payload": {"execution_id": UUID(int=3).bytes, "status": "FAILED", "error": "boom"},
... })
>>> data[:10] == b"\xc3\x01" + fingerprint(CURRENT_VERSION)
True
>>> event = decode(data)
>>> event["event_type"], event["occurred_at"], event["payload"]["status"]
('EXECUTION_FINISHED', 1700000000000000, 'FAILED')

Evolution rule: a released ``.avsc`` file is never edited, because events written
with it may be read at any later time (replays, dead letters, old partitions). A
change is a new file ``lineage_event.v<N+1>.avsc`` holding only backward-compatible
changes: new fields need defaults; new enum symbols rely on the enum default; no
field is removed or retyped unless Avro resolution reads the old data as the new
type. The newest file becomes ``CURRENT_VERSION``: ``encode`` writes it, and
``decode`` reads every released version into its shape. Deploy consumers before
producers, so that nothing on the topic names a schema a consumer has never seen
(which it would reject with UnknownSchemaError).
"""

from ._codec import (
    EventType,
    ExecutionStatus,
    decode,
    encode,
    encode_with,
    fingerprint,
    writer_schema,
)
from ._registry import CURRENT_VERSION, RELEASES

#: Every released schema version, oldest first.
RELEASED_VERSIONS: tuple[int, ...] = tuple(sorted(RELEASES))

__all__ = [
    "CURRENT_VERSION",
    "RELEASED_VERSIONS",
    "EventType",
    "ExecutionStatus",
    "decode",
    "encode",
    "encode_with",
    "fingerprint",
    "writer_schema",
]
