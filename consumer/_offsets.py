"""The projection's position in the topic, stored beside the projection itself.

``consumer_offsets`` holds, per topic partition, the next offset to apply. The
projector advances it in the same transaction as the rows the events produced,
and only *conditionally*: ``UPDATE ... WHERE next_offset = <the offset this
process last saw stored>``. If the row does not match, someone else moved it
since: a zombie member after a rebalance, another projector of the same group,
or a rebuild that swapped a new schema in. The batch is then rolled back and the
partition re-read from the stored offset. That single check is what keeps the
effect exactly-once under kill -9, rebalances and schema swaps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

TABLE = "consumer_offsets"


@dataclass(frozen=True, slots=True)
class OffsetMove:
    """Advance one partition from ``expected`` (None: no row yet) to ``next_offset``."""

    partition: int
    expected: int | None
    next_offset: int


def load_offsets(
    conn: psycopg.Connection[Any],
    schema: str,
    topic: str,
    partitions: Iterable[int] | None = None,
) -> dict[int, int]:
    """The stored next offsets of ``topic`` (of ``partitions`` only, when given)."""
    query = sql.SQL("SELECT partition, next_offset FROM {} WHERE topic = %s").format(
        sql.Identifier(schema, TABLE)
    )
    params: list[Any] = [topic]
    if partitions is not None:
        query += sql.SQL(" AND partition = ANY(%s)")
        params.append(list(partitions))
    return {int(p): int(o) for p, o in conn.execute(query, params).fetchall()}


def advance_offsets(
    conn: psycopg.Connection[Any], schema: str, topic: str, moves: Iterable[OffsetMove]
) -> frozenset[int]:
    """Apply ``moves`` inside the caller's transaction; return the partitions that conflicted.

    An empty result means every partition moved. Otherwise the caller must roll
    back: the transaction holds a partial move.

    Must be the first statement of the batch transaction. Its row locks are what
    a rebuild's swap waits for (and vice versa); and if a swap renamed schemas
    while this statement waited, PostgreSQL resolves the table name again after
    the wait, so the move lands in the new schema. Statements run after it then
    see the same schema. The table-identity check below makes that explicit
    rather than trusting the server's name re-resolution.
    """
    table = sql.Identifier(schema, TABLE)
    # Sorted so that two processes touching the same rows lock them in one order.
    ordered = sorted(moves, key=lambda m: m.partition)
    updates = [m for m in ordered if m.expected is not None]
    inserts = [m for m in ordered if m.expected is None]
    wanted = {m.partition for m in updates} | {m.partition for m in inserts}
    moved: set[int] = set()
    oids: set[int] = set()
    if updates:
        rows = conn.execute(
            sql.SQL(
                "UPDATE {t} AS o SET next_offset = m.next_offset, updated_at = now() "
                "FROM unnest(%s::int[], %s::bigint[], %s::bigint[]) AS m(partition, expected, "
                "next_offset) "
                "WHERE o.topic = %s AND o.partition = m.partition AND o.next_offset = m.expected "
                "RETURNING o.partition, o.tableoid::bigint"
            ).format(t=table),
            (
                [m.partition for m in updates],
                [m.expected for m in updates],
                [m.next_offset for m in updates],
                topic,
            ),
        ).fetchall()
        moved.update(int(p) for p, _ in rows)
        oids.update(int(o) for _, o in rows)
    if inserts:
        rows = conn.execute(
            sql.SQL(
                "INSERT INTO {t} AS o (topic, partition, next_offset) "
                "SELECT %s, m.partition, m.next_offset "
                "FROM unnest(%s::int[], %s::bigint[]) AS m(partition, next_offset) "
                "ON CONFLICT (topic, partition) DO NOTHING "
                "RETURNING o.partition, o.tableoid::bigint"
            ).format(t=table),
            (topic, [m.partition for m in inserts], [m.next_offset for m in inserts]),
        ).fetchall()
        moved.update(int(p) for p, _ in rows)
        oids.update(int(o) for _, o in rows)
    if moved and oids != {current_table_oid(conn, schema)}:
        # The rows we moved are not in the table the schema name now designates:
        # a swap happened between name resolution and now. Treat all as conflicts.
        return frozenset(wanted)
    return frozenset(wanted - moved)


def current_table_oid(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """The oid of ``<schema>.consumer_offsets`` as the catalog resolves it right now."""
    row = conn.execute(
        "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, TABLE),
    ).fetchone()
    return None if row is None else int(row[0])


def offsets_after(
    expected: Mapping[int, int | None], ranges: Mapping[int, tuple[int, int]]
) -> list[OffsetMove]:
    """The moves that cover ``ranges`` (partition -> first and last offset) of a batch."""
    return [
        OffsetMove(partition=p, expected=expected.get(p), next_offset=last + 1)
        for p, (_, last) in sorted(ranges.items())
    ]
