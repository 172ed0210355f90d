"""The known dataset of the query side's tests is what it claims to be."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from support.query_dataset import Dataset, _settled, load


@pytest.fixture
def projection(pg_dsn: str, pg_schema: str) -> Dataset:
    """The dataset, loaded into this test's own schema."""
    return load(pg_dsn, pg_schema)


def test_the_read_only_role_sees_the_dataset_and_may_not_write(
    projection: Dataset, pg_read_dsn: str
) -> None:
    with psycopg.connect(pg_read_dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{projection.schema}"')
        count = conn.execute("SELECT count(*) FROM lineage").fetchone()
        assert count is not None and count[0] == len(projection.rows) == 88
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM lineage")


def test_generated_columns_agree_with_the_tree(projection: Dataset, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f'SET search_path TO "{projection.schema}"')
        got: dict[uuid.UUID, bool] = dict(
            conn.execute("SELECT id, settled FROM lineage WHERE known").fetchall()
        )
    want = {i: _settled(projection, r) for i, r in projection.rows.items() if r["known"]}
    assert got == want
    assert got[projection.root] is True and got[projection.replay_pending] is False
