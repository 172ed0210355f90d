"""The migration mechanism against the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from factflow_lineage.db import connect
from factflow_lineage.errors import MigrationError
from factflow_lineage.migrations import apply_migrations, load_migrations


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)


def _tables(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


def test_applies_in_order_once_and_records_each(
    tmp_path: Path, pg_dsn: str, pg_schema: str
) -> None:
    _write(tmp_path, "0001_widgets.sql", "CREATE TABLE widgets (id int PRIMARY KEY);")
    _write(tmp_path, "0002_gadgets.sql", "CREATE TABLE gadgets (w int REFERENCES widgets);")
    with connect(pg_dsn) as conn:
        first = apply_migrations(conn, pg_schema, load_migrations(tmp_path))
        second = apply_migrations(conn, pg_schema, load_migrations(tmp_path))
    assert [m.version for m in first.applied] == [1, 2]
    assert second.applied == () and second.already == (1, 2)
    assert {"widgets", "gadgets", "schema_migrations"} <= _tables(pg_dsn, pg_schema)


def test_a_failing_migration_applies_nothing(tmp_path: Path, pg_dsn: str, pg_schema: str) -> None:
    _write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    _write(tmp_path, "0002_broken.sql", "CREATE TABLE broken (id int); SELECT no_such_column;")
    with connect(pg_dsn) as conn, pytest.raises(MigrationError, match="no_such_column"):
        apply_migrations(conn, pg_schema, load_migrations(tmp_path))
    assert _tables(pg_dsn, pg_schema) == set()


def test_an_edited_released_migration_is_refused(
    tmp_path: Path, pg_dsn: str, pg_schema: str
) -> None:
    _write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    with connect(pg_dsn) as conn:
        apply_migrations(conn, pg_schema, load_migrations(tmp_path))
        _write(tmp_path, "0001_a.sql", "CREATE TABLE a (id bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            apply_migrations(conn, pg_schema, load_migrations(tmp_path))


def test_the_read_only_role_can_read_but_not_write(
    tmp_path: Path, pg_dsn: str, pg_read_dsn: str, pg_schema: str
) -> None:
    _write(tmp_path, "0001_t.sql", "CREATE TABLE t (id int); INSERT INTO t VALUES (7);")
    with connect(pg_dsn) as conn:
        apply_migrations(conn, pg_schema, load_migrations(tmp_path))
    table = sql.Identifier(pg_schema, "t")
    with psycopg.connect(pg_read_dsn) as conn:
        assert conn.execute(sql.SQL("SELECT id FROM {}").format(table)).fetchall() == [(7,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("INSERT INTO {} VALUES (8)").format(table))
