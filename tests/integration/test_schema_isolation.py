"""The projection stays in its own schema: never public, never a fall-through to it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from psycopg import sql

from factflow_lineage.db import connect


@pytest.mark.parametrize("schema", ["public", "information_schema", "pg_catalog"])
def test_init_refuses_a_shared_or_system_schema_in_one_line(
    pg_dsn: str, kafka_bootstrap: str, schema: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "factflow_lineage", "init", "--skip-topic"],
        env={
            **os.environ,
            "FACTFLOW_PG_SCHEMA": schema,
            "FACTFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"FACTFLOW_PG_SCHEMA={schema!r}" in lines[0]
    with psycopg.connect(pg_dsn) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename = 'schema_migrations'"
        ).fetchone()
    assert found == (0,)


def test_a_table_missing_from_the_schema_is_an_error_not_a_read_of_public(
    pg_dsn: str, pg_schema: str
) -> None:
    # A table of the same name in public: before, `SET search_path TO <schema>, public`
    # answered from it when the projection's schema lacked the table.
    decoy = f"decoy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
        admin.execute(sql.SQL("CREATE TABLE public.{} (x int)").format(sql.Identifier(decoy)))
        admin.execute(sql.SQL("INSERT INTO public.{} VALUES (42)").format(sql.Identifier(decoy)))
    try:
        with connect(pg_dsn, schema=pg_schema, autocommit=True) as conn:
            path = conn.execute("SHOW search_path").fetchone()
            assert path is not None and path[0] == pg_schema
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute(sql.SQL("SELECT x FROM {}").format(sql.Identifier(decoy)))
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(decoy)))


@pytest.mark.parametrize("schema", ["public\n", "lineage\n", "pg_catalog\n", "lineage\n\n"])
def test_init_refuses_a_schema_name_with_a_trailing_newline(
    pg_dsn: str, kafka_bootstrap: str, schema: str
) -> None:
    # `$` in a Python pattern also matches before a final newline: 'public\n' passed as
    # a valid, non-reserved name and init created a schema literally named "public\n",
    # one an operator cannot tell from public in most listings.
    done = subprocess.run(
        [sys.executable, "-m", "factflow_lineage", "init", "--skip-topic"],
        env={
            **os.environ,
            "FACTFLOW_PG_SCHEMA": schema,
            "FACTFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert done.returncode == 2, done.stdout + done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, done.stderr
        assert "FACTFLOW_PG_SCHEMA" in lines[0] or "invalid schema name" in lines[0]
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            created = admin.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchall()
            admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
    assert created == []
