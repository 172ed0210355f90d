"""``factflow projector status``: how far the projection is behind the topic, per partition.

Lag = the partition's high watermark (offset of the next message to be written)
minus the projection's stored next offset: the number of events written to
Kafka and not yet visible in PostgreSQL. It is read from PostgreSQL, where the
position really lives, not from the group's (advisory) committed offsets: it is
the lag of the group that owns the schema (``projection_owner``, shown beside
it), whichever group an operator asks about.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from psycopg import sql

from factflow_lineage.config import Settings
from factflow_lineage.db import connect, first_line
from factflow_lineage.errors import BrokerUnavailable, DatabaseUnavailable, NotFound

from ._offsets import TABLE as OFFSETS_TABLE
from ._owner import Owner, load_owner


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition: where the topic is, where the projection is, and the difference."""

    partition: int
    low_watermark: int
    high_watermark: int
    stored_offset: int | None  # None: nothing projected from this partition yet
    updated_at: datetime | None

    @property
    def lag(self) -> int:
        start = self.low_watermark if self.stored_offset is None else self.stored_offset
        return max(0, self.high_watermark - start)


def _stored(conn: psycopg.Connection[Any], schema: str, topic: str) -> dict[int, tuple[int, Any]]:
    rows = conn.execute(
        sql.SQL("SELECT partition, next_offset, updated_at FROM {} WHERE topic = %s").format(
            sql.Identifier(schema, OFFSETS_TABLE)
        ),
        (topic,),
    ).fetchall()
    return {int(p): (int(o), at) for p, o, at in rows}


def _watermarks(settings: Settings) -> dict[int, tuple[int, int]]:
    kafka = settings.kafka
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": "factflow-status",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(kafka.topic, timeout=10)
        described = metadata.topics.get(kafka.topic)
        if described is None or described.error is not None or not described.partitions:
            raise NotFound(f"topic {kafka.topic!r} does not exist")
        return {
            p: consumer.get_watermark_offsets(TopicPartition(kafka.topic, p), timeout=10)
            for p in sorted(described.partitions)
        }
    except KafkaException as e:
        raise BrokerUnavailable(f"Kafka at {kafka.bootstrap}: {e}") from e
    finally:
        consumer.close()


def projector_status(settings: Settings, *, dsn: str | None = None) -> list[PartitionLag]:
    """Lag per partition of the lineage topic (reads with ``dsn``, default: the read DSN)."""
    return projection_status(settings, dsn=dsn)[0]


def projection_status(
    settings: Settings, *, dsn: str | None = None
) -> tuple[list[PartitionLag], Owner | None]:
    """Lag per partition, and the consumer group that owns the schema (None: unowned)."""
    marks = _watermarks(settings)
    pg = settings.postgres
    with connect(dsn or pg.read_dsn, autocommit=True) as conn:
        try:
            stored = _stored(conn, pg.schema, settings.kafka.topic)
            owner = load_owner(conn, pg.schema)
        except psycopg.errors.UndefinedTable as e:
            raise NotFound(f"schema {pg.schema!r} has no projection (run `factflow init`)") from e
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(first_line(e)) from e
    lags = [
        PartitionLag(
            partition=p,
            low_watermark=low,
            high_watermark=high,
            stored_offset=stored[p][0] if p in stored else None,
            updated_at=stored[p][1] if p in stored else None,
        )
        for p, (low, high) in marks.items()
    ]
    return lags, owner
