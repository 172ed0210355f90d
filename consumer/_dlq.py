"""The dead-letter table: written by the projector, listed by ``factflow dlq list``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ._decoder import DeadLetter

TABLE = "dead_letters"


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A row of the dead-letter table."""

    id: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    error: str
    received_at: datetime


def insert_dead_letters(
    conn: psycopg.Connection[Any], schema: str, letters: Sequence[DeadLetter]
) -> None:
    """Store ``letters`` inside the caller's transaction."""
    if not letters:
        return
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                'INSERT INTO {} (topic, partition, "offset", key, raw, error) '
                "VALUES (%s, %s, %s, %s, %s, %s) "
                'ON CONFLICT (topic, partition, "offset") DO NOTHING'
            ).format(sql.Identifier(schema, TABLE)),
            [(d.topic, d.partition, d.offset, d.key, d.raw, d.error) for d in letters],
        )


def list_dead_letters(
    conn: psycopg.Connection[Any], schema: str, *, limit: int = 20
) -> list[StoredDeadLetter]:
    """The newest ``limit`` dead letters, newest first."""
    rows = conn.execute(
        sql.SQL(
            'SELECT id, topic, partition, "offset", key, raw, error, received_at '
            "FROM {} ORDER BY received_at DESC, id DESC LIMIT %s"
        ).format(sql.Identifier(schema, TABLE)),
        (limit,),
    ).fetchall()
    return [
        StoredDeadLetter(
            id=r[0],
            topic=r[1],
            partition=r[2],
            offset=r[3],
            key=None if r[4] is None else bytes(r[4]),
            raw=None if r[5] is None else bytes(r[5]),
            error=r[6],
            received_at=r[7],
        )
        for r in rows
    ]


def count_dead_letters(conn: psycopg.Connection[Any], schema: str) -> int:
    """How many dead letters the projection holds."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, TABLE))
    ).fetchone()
    return 0 if row is None else int(row[0])
