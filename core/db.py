"""The PostgreSQL boundary: connections, and psycopg errors turned into ours.

Every package opens connections through here, so a refused or unreachable
database is reported the same way everywhere (one line, password redacted).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from .config import _redact
from .errors import DatabaseUnavailable


def connect(dsn: str, *, schema: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection; with ``schema``, unqualified names resolve there first.

    Server-side prepared statements are off (``prepare_threshold=None``): a
    prepared plan keeps the table OIDs it was planned with, and a projection
    rebuild swaps schemas under a running process by renaming them.
    """
    kwargs.setdefault("connect_timeout", 5)
    kwargs.setdefault("prepare_threshold", None)
    try:
        conn = psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(f"cannot connect to {_redact(dsn)}: {first_line(e)}") from e
    if schema is not None:
        set_search_path(conn, schema)
    return conn


def set_search_path(conn: psycopg.Connection[Any], schema: str) -> None:
    """Point unqualified names at ``schema`` alone for this session.

    Not ``schema, public``: a table missing from ``schema`` (an old migration
    level, a typo in FACTFLOW_PG_SCHEMA) must be an error, never a silent read
    of whatever ``public`` holds. pg_catalog (and pg_temp, for the writer's
    staging tables) are searched by PostgreSQL anyway.
    """
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    if not conn.autocommit:
        conn.commit()


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error message (psycopg adds DETAIL/HINT lines)."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
