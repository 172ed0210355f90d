"""The batch writer against the real PostgreSQL and the real projection.

One transaction per batch: offsets, rows and dead letters together, or none of
them. A batch the database refuses is split until the one message to blame is
found; it becomes a dead letter, the rest is applied, the offsets stay exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import sql
from test_projector_support import checksums, drop_schema, migrate, realistic_events

from factflow_lineage.consumer._decoder import default_decode
from factflow_lineage.consumer._offsets import load_offsets
from factflow_lineage.consumer._projection import Projection
from factflow_lineage.consumer._writer import BatchWriter
from factflow_lineage.db import connect
from factflow_lineage.schemas import encode
from support.messages import FakeMessage as Msg

TOPIC = "lineage"


class Refusing:
    """The real projection, except that PostgreSQL refuses any batch holding a marked event."""

    def __init__(self, schema: str, marked: set[bytes]) -> None:
        self.inner = Projection(schema)
        self.marked = marked
        self.calls = 0

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[Mapping[str, Any]]) -> Any:
        self.calls += 1
        if any(e["event_id"] in self.marked for e in events):
            conn.execute("SELECT 1 / 0")  # a DataError, raised by the server
        return self.inner.apply(conn, events)


@pytest.fixture
def conn(pg_dsn: str, pg_schema: str) -> Iterator[psycopg.Connection[Any]]:
    migrate(pg_dsn, pg_schema)
    with connect(pg_dsn, autocommit=True) as c:
        yield c


def _messages(events: Sequence[Mapping[str, Any]], partitions: int = 3) -> list[Msg]:
    offsets = [0] * partitions
    out = []
    for i, e in enumerate(events):
        p = i % partitions
        out.append(Msg(p, offsets[p], encode(e)))
        offsets[p] += 1
    return out


def _rows(conn: psycopg.Connection[Any], schema: str, query: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql.SQL(query).format(s=sql.Identifier(schema))).fetchall()


def test_a_refused_message_is_isolated_and_everything_else_applied(
    conn: psycopg.Connection[Any], pg_dsn: str, pg_schema: str
) -> None:
    events = realistic_events(600, seed=61)
    culprit = events[401]
    projection = Refusing(pg_schema, {culprit["event_id"]})
    writer = BatchWriter(
        schema=pg_schema, topic=TOPIC, projection=projection, decode=default_decode()
    )
    messages = _messages(events)
    result = writer.write(conn, messages, {})
    assert result.conflicts == frozenset()
    assert result.dead_letters == 1 and result.events == len(events) - 1
    assert result.committed == {0: 200, 1: 200, 2: 200}
    assert 2 < result.transactions < 30  # a binary search, not one transaction per event
    assert load_offsets(conn, pg_schema, TOPIC) == {0: 200, 1: 200, 2: 200}
    letters = _rows(conn, pg_schema, 'SELECT partition, "offset", error FROM {s}.dead_letters')
    blamed = messages[401]
    assert letters == [(blamed.p, blamed.o, letters[0][2])]
    assert letters[0][2].startswith("rejected by the projection: DivisionByZero")

    # Everything but the culprit, applied directly, gives the same rows.
    direct = f"{pg_schema}_direct"
    try:
        migrate(pg_dsn, direct)
        with conn.transaction():
            Projection(direct).apply(conn, [e for i, e in enumerate(events) if i != 401])
        mine = {k: v for k, v in checksums(pg_dsn, pg_schema).items() if k != "dead_letters"}
        theirs = checksums(pg_dsn, direct)
        for table in ("lineage", "executions", "lineage_stats"):
            assert mine[table] == theirs[table], table
    finally:
        drop_schema(pg_dsn, direct)


def test_events_the_projection_rejects_become_dead_letters_in_the_same_transaction(
    conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    events = realistic_events(50, seed=62)
    started = next(e for e in events if e["event_type"] == "INVOCATION_STARTED")
    # (A NUL would be repaired: only a wrong shape is rejected, here a row its own parent.)
    bad = dict(
        started, payload=dict(started["payload"], parent_id=started["payload"]["lineage_id"])
    )
    writer = BatchWriter(
        schema=pg_schema, topic=TOPIC, projection=Projection(pg_schema), decode=default_decode()
    )
    messages = [*_messages(events, partitions=1), Msg(0, len(events), encode(bad))]
    result = writer.write(conn, messages, {})
    assert result.transactions == 1
    assert result.dead_letters == 1
    letters = _rows(conn, pg_schema, 'SELECT "offset", error FROM {s}.dead_letters')
    assert letters[0][0] == len(events)
    assert letters[0][1].startswith("rejected by the projection: ")


def test_a_conflict_rolls_the_whole_batch_back(
    conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    events = realistic_events(30, seed=63)
    writer = BatchWriter(
        schema=pg_schema, topic=TOPIC, projection=Projection(pg_schema), decode=default_decode()
    )
    messages = _messages(events, partitions=2)
    first = writer.write(conn, messages[:10], {})
    assert first.committed == {0: 5, 1: 5}
    # A zombie still believes partition 1 starts at 0.
    stale = writer.write(conn, messages[10:], {0: 5, 1: 0})
    assert stale.conflicts == frozenset({1}) and stale.committed == {} and stale.events == 0
    assert load_offsets(conn, pg_schema, TOPIC) == {0: 5, 1: 5}
    count = _rows(conn, pg_schema, "SELECT count(*) FROM {s}.lineage")[0][0]
    again = writer.write(conn, messages[10:], {0: 5, 1: 5})
    assert again.conflicts == frozenset()
    assert _rows(conn, pg_schema, "SELECT count(*) FROM {s}.lineage")[0][0] > count
