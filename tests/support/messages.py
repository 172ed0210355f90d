"""A consumed Kafka message for tests: what the projector reads of ``confluent_kafka.Message``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeMessage:
    """Partition ``p``, offset ``o``, value ``v`` (None: a tombstone), key ``k``, topic ``t``."""

    p: int
    o: int
    v: bytes | None = None
    k: bytes | None = b"key"
    t: str = "lineage"

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes | None:
        return self.v
