"""Order-independence and idempotence of the projection, as properties.

For random event sets over random DAGs (``tests.support.events.scenarios``:
fan-out, placeholders, conflicting and missing events, failures,
cancellations, executions), every arrival order, duplication and split into
batches must give the tables the reference model computes from the set alone,
and the same tables as one batch in canonical order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from factflow_lineage.consumer._projection import Projection
from factflow_lineage.db import connect
from factflow_lineage.migrations import apply_migrations, projection_migrations
from tests.support import reference_model
from tests.support.events import Event, scenarios

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(pg_dsn: str, pg_schema: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(pg_dsn, autocommit=True) as c:
        apply_migrations(c, pg_schema, projection_migrations())
        yield c


def _truncate(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(
        sql.SQL("TRUNCATE {}").format(
            sql.SQL(", ").join(sql.Identifier(schema, t) for t in reference_model.TABLES)
        )
    )


def _stream(events: list[Event], rng: random.Random) -> list[list[Event]]:
    """The events duplicated (up to five times), shuffled, and cut into batches."""
    stream = [e for e in events for _ in range(rng.choice((1, 1, 1, 2, 3, 5)))]
    rng.shuffle(stream)
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 8))))
    return [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def _check(
    conn: psycopg.Connection[Any], schema: str, events: list[Event], rng: random.Random
) -> None:
    projection = Projection(schema)
    want = reference_model.project(events)

    _truncate(conn, schema)
    for batch in _stream(events, rng):
        with conn.transaction():
            projection.apply(conn, batch)
    got = reference_model.dump(conn, schema)
    assert got == want, reference_model.differences(want, got)

    _truncate(conn, schema)
    canonical = sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))
    with conn.transaction():
        projection.apply(conn, canonical)
    got = reference_model.dump(conn, schema)
    assert got == want, reference_model.differences(want, got)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=scenarios(), data=st.data())
def test_any_order_duplicates_and_batches_give_the_models_tables(
    conn: psycopg.Connection[Any], pg_schema: str, events: list[Event], data: st.DataObject
) -> None:
    _check(conn, pg_schema, events, data.draw(st.randoms(use_true_random=False)))


@pytest.mark.slow
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=scenarios(max_rows=60), data=st.data())
def test_any_order_on_bigger_dags(
    conn: psycopg.Connection[Any], pg_schema: str, events: list[Event], data: st.DataObject
) -> None:
    _check(conn, pg_schema, events, data.draw(st.randoms(use_true_random=False)))
