"""The projection's position in the topic, stored beside the projection itself.

``consumer_offsets`` holds, per topic partition, the next offset to apply. The
projector advances it in the same transaction as the rows the events produced,
and only *conditionally*: a batch moves a partition only if it begins exactly
at the stored next offset, as the process last saw it stored (``UPDATE ...
WHERE next_offset = <expected> AND next_offset = <the batch's first offset>``).
If the row does not match, someone else moved it since (a zombie member after
a rebalance, another projector, a rebuild that swapped a new schema in), or
the batch was fetched from somewhere else than the stored position (before a
re-seek); either way committing it would skip or repeat events. The batch is
then rolled back and the partition re-read from the stored offset. That single
check, on where a batch *begins* and not only on where the process believed the
partition was, is what keeps the effect exactly-once under kill -9,
rebalances, schema swaps and several projectors: a gap is never committed,
whatever its cause.

A partition with no stored row is moved by an insert, which conflicts if
another process inserted first; that the batch then begins at the partition's
log start cannot be checked here, the caller checks it against the broker's
low watermark (``_loop``).

The one gap that is committed, deliberately and visibly: offsets the topic no
longer holds (deleted by retention before they were projected). ``skip_lost``
moves the stored offset over them, conditionally too.
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
    """Advance one partition over a batch of offsets ``first`` .. ``next_offset - 1``.

    ``expected``: the stored next offset the caller read (None: no row yet, the
    move inserts one). The move happens only if the stored next offset is both
    ``expected`` and ``first``: the batch must begin where the projection stands.
    """

    partition: int
    expected: int | None
    next_offset: int
    first: int


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
    back: the transaction holds a partial move. A partition conflicts when its
    stored next offset is not the move's ``expected`` or not its ``first`` (or,
    for an insert, when a row exists already).

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
                "FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::bigint[]) "
                "AS m(partition, expected, first, next_offset) "
                # Where the caller believed the partition was, and where the
                # batch begins: a batch fetched from elsewhere never commits,
                # even if the caller's belief is right.
                "WHERE o.topic = %s AND o.partition = m.partition "
                "AND o.next_offset = m.expected AND o.next_offset = m.first "
                "RETURNING o.partition, o.tableoid::bigint"
            ).format(t=table),
            (
                [m.partition for m in updates],
                [m.expected for m in updates],
                [m.first for m in updates],
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


def skip_lost(
    conn: psycopg.Connection[Any], schema: str, topic: str, partition: int, stored: int, to: int
) -> bool:
    """Move ``partition`` from ``stored`` over offsets the topic lost, to ``to``; in the caller's
    transaction. False: the stored offset is not ``stored`` any more (someone moved it).
    """
    row = conn.execute(
        sql.SQL(
            "UPDATE {} SET next_offset = %s, updated_at = now() "
            "WHERE topic = %s AND partition = %s AND next_offset = %s RETURNING 1"
        ).format(sql.Identifier(schema, TABLE)),
        (to, topic, partition, stored),
    ).fetchone()
    return row is not None


def offsets_after(
    expected: Mapping[int, int | None], ranges: Mapping[int, tuple[int, int]]
) -> list[OffsetMove]:
    """The moves that cover ``ranges`` (partition -> first and last offset) of a batch."""
    return [
        OffsetMove(partition=p, expected=expected.get(p), next_offset=last + 1, first=first)
        for p, (first, last) in sorted(ranges.items())
    ]
