"""Kafka messages in, lineage events and dead letters out.

A message that is not a lineage event we can read (undecodable bytes, an
unknown writer schema, invalid values, no value at all) becomes a
``DeadLetter``: the projector stores it and its partition moves on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from factflow_lineage.errors import DecodeError

Event = Mapping[str, Any]
Decode = Callable[[bytes], Event]


class KafkaMessage(Protocol):
    """The part of ``confluent_kafka.Message`` the projector reads (fakes implement it too)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> str | bytes | None: ...
    def value(self) -> str | bytes | None: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the projector could not use, with where it was and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    error: str


@dataclass(slots=True)
class DecodedBatch:
    """One batch of messages: its events, its dead letters, and the offsets it covers."""

    # The decoded events; empty when a worker process decoded and planned them
    # (``_offload``): then ``plan`` covers them, and ``sources`` counts them.
    events: list[Event] = field(default_factory=list)
    # The message each event came from (same index as ``events``, or the plan's).
    sources: list[KafkaMessage] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # partition -> (first offset, last offset) of the messages of the batch
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    # The projection's plan of exactly ``events`` (``Projection.plan``), made
    # ahead by ``BatchWriter.decode`` so that it too overlaps the write in
    # flight; None: the projection plans inside the transaction (``apply``).
    plan: Any = None

    @property
    def size(self) -> int:
        return len(self.sources) + len(self.dead_letters)


def default_decode() -> Decode:
    """The schemas package's decoder (imported late: it is a sibling package)."""
    from factflow_lineage.schemas import decode

    return decode


def _as_bytes(data: str | bytes | None) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    return data.encode()


# A message that is not an event we can read: its index in the batch, and why.
Failure = tuple[int, str]


def decode_values(
    values: Sequence[bytes | None], decode: Decode
) -> tuple[list[Event], list[Failure]]:
    """Decode message values: the events, in order, and the values that are none."""
    events: list[Event] = []
    failures: list[Failure] = []
    for index, raw in enumerate(values):
        if raw is None:
            failures.append((index, "DecodeError: message has no value (tombstone)"))
            continue
        try:
            events.append(decode(raw))
        except DecodeError as e:
            failures.append((index, f"{type(e).__name__}: {e}"))
    return events, failures


def message_values(messages: Sequence[KafkaMessage]) -> list[bytes | None]:
    """The values of ``messages``, as bytes."""
    return [_as_bytes(m.value()) for m in messages]


def decode_messages(messages: Sequence[KafkaMessage], topic: str, decode: Decode) -> DecodedBatch:
    """Decode ``messages`` (all of ``topic``, already in offset order per partition)."""
    events, failures = decode_values(message_values(messages), decode)
    batch = collect(messages, topic, failures)
    batch.events = events
    return batch


def collect(messages: Sequence[KafkaMessage], topic: str, failures: list[Failure]) -> DecodedBatch:
    """The batch of ``messages`` but for its events: offsets covered, sources, dead letters.

    ``failures``: the messages that are not events, by index, in order.
    """
    batch = DecodedBatch()
    ranges = batch.ranges
    sources = batch.sources
    failed = iter(failures)
    next_failed, error = next(failed, (-1, ""))
    for index, message in enumerate(messages):
        partition = message.partition()
        offset = message.offset()
        assert partition is not None and offset is not None  # consumed messages have both
        span = ranges.get(partition)
        ranges[partition] = (offset, offset) if span is None else (span[0], offset)
        if index == next_failed:
            batch.dead_letters.append(dead_letter(message, topic, error))
            next_failed, error = next(failed, (-1, ""))
        else:
            sources.append(message)
    return batch


def dead_letter(message: KafkaMessage, topic: str, error: str) -> DeadLetter:
    """The dead letter of ``message``, rejected for ``error``."""
    partition, offset = message.partition(), message.offset()
    assert partition is not None and offset is not None
    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        key=_as_bytes(message.key()),
        raw=_as_bytes(message.value()),
        error=error,
    )
