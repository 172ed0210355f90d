"""Kafka messages to events and dead letters; offsets covered per partition."""

from __future__ import annotations

import struct
import uuid
from typing import Any

from factflow_lineage.consumer._decoder import DeadLetter, decode_messages, default_decode
from factflow_lineage.consumer._offsets import OffsetMove, offsets_after
from factflow_lineage.schemas import encode
from support.messages import FakeMessage as Msg


def event(seq: int) -> dict[str, Any]:
    execution = uuid.uuid4().bytes
    return {
        "event_id": uuid.uuid4().bytes,
        "event_type": "EXECUTION_FINISHED",
        "occurred_at": 1_700_000_000_000_000 + seq,
        "producer_id": uuid.uuid4().bytes,
        "sequence": seq,
        "payload": {"execution_id": execution, "status": "COMPLETED", "error": None},
    }


def test_good_messages_decode_in_order_with_their_sources() -> None:
    events = [event(i) for i in range(4)]
    messages = [Msg(i % 2, 10 + i, encode(e)) for i, e in enumerate(events)]
    batch = decode_messages(messages, "t", default_decode())
    assert [e["sequence"] for e in batch.events] == [0, 1, 2, 3]
    assert batch.sources == messages
    assert batch.dead_letters == []
    assert batch.ranges == {0: (10, 12), 1: (11, 13)}
    assert batch.size == 4


def test_poison_becomes_dead_letters_and_still_counts_for_the_offsets() -> None:
    good = encode(event(1))
    unknown_schema = b"\xc3\x01" + struct.pack("<Q", 12345) + good[10:]
    messages = [
        Msg(0, 5, b"not avro at all"),
        Msg(0, 6, good),
        Msg(1, 7, unknown_schema),
        Msg(2, 8, None, k=None),
        Msg(2, 9, good[:-3]),  # truncated body
    ]
    batch = decode_messages(messages, "t", default_decode())
    assert len(batch.events) == 1
    assert [(d.partition, d.offset) for d in batch.dead_letters] == [(0, 5), (1, 7), (2, 8), (2, 9)]
    first = batch.dead_letters[0]
    assert first == DeadLetter(
        topic="t", partition=0, offset=5, key=b"key", raw=b"not avro at all", error=first.error
    )
    assert first.error.startswith("DecodeError: ")
    assert batch.dead_letters[1].error.startswith("UnknownSchemaError: ")
    assert "tombstone" in batch.dead_letters[2].error
    assert batch.dead_letters[2].raw is None
    assert batch.ranges == {0: (5, 6), 1: (7, 7), 2: (8, 9)}


def test_offsets_after_moves_each_partition_past_its_last_message() -> None:
    moves = offsets_after({0: 5, 2: None}, {2: (0, 41), 0: (5, 9), 1: (3, 3)})
    assert moves == [
        OffsetMove(partition=0, expected=5, next_offset=10, first=5),
        OffsetMove(partition=1, expected=None, next_offset=4, first=3),
        OffsetMove(partition=2, expected=None, next_offset=42, first=0),
    ]
