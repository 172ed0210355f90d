"""A content checksum of every table of a projection schema.

Two projections of the same events must hold the same rows: a rebuild and the
live projection, a run killed ten times and an uninterrupted one. Columns that
record the *processing* rather than the events are left out: surrogate ids
(a ``nextval`` default) and processing timestamps (a ``now()`` default), which
differ between two correct runs. So are ``schema_migrations`` (when, not what)
and ``projection_owner`` (which consumer group projects, not what it projected).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

_SKIP_TABLES = frozenset({"schema_migrations", "projection_owner"})
# Column defaults that mark processing metadata rather than projected content.
_PROCESSING_DEFAULTS = (
    "nextval(",
    "now()",
    "current_timestamp",
    "clock_timestamp()",
    "statement_timestamp()",
    "transaction_timestamp()",
)


@dataclass(frozen=True, slots=True)
class TableChecksum:
    """Row count and order-independent digest of one table's content columns."""

    rows: int
    digest: str
    columns: tuple[str, ...]


def content_columns(conn: psycopg.Connection[Any], schema: str, table: str) -> tuple[str, ...]:
    """The columns of ``schema.table`` that hold projected content, in table order."""
    rows = conn.execute(
        "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) "
        "FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    return tuple(
        name
        for name, default in rows
        if default is None or not any(mark in default.lower() for mark in _PROCESSING_DEFAULTS)
    )


def table_checksums(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    exclude_columns: Mapping[str, frozenset[str]] | None = None,
) -> dict[str, TableChecksum]:
    """Checksum every ordinary table of ``schema`` (see the module docstring)."""
    exclude = exclude_columns or {}
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "ORDER BY c.relname",
            (schema,),
        ).fetchall()
        if r[0] not in _SKIP_TABLES
    ]
    result: dict[str, TableChecksum] = {}
    for table in tables:
        columns = tuple(
            c for c in content_columns(conn, schema, table) if c not in exclude.get(table, ())
        )
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '') "
                "FROM (SELECT md5(ROW({cols})::text) AS h FROM {table}) AS t"
            ).format(
                cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                table=sql.Identifier(schema, table),
            )
        ).fetchone()
        assert row is not None
        result[table] = TableChecksum(rows=int(row[0]), digest=str(row[1]), columns=columns)
    return result
