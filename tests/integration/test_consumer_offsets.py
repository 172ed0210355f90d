"""The conditional offset move against the real PostgreSQL: the exactly-once mechanism.

Every case that must make a batch roll back: someone moved the row, someone
inserted it first, or a rebuild swapped the schema while the move waited.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from factflow_lineage.consumer._offsets import OffsetMove, advance_offsets, load_offsets
from factflow_lineage.db import connect
from factflow_lineage.migrations import apply_migrations, projection_migrations

TOPIC = "lineage"


@pytest.fixture
def conn(pg_dsn: str, pg_schema: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(pg_dsn, autocommit=True) as c:
        apply_migrations(c, pg_schema, projection_migrations())
        yield c


def move(conn: psycopg.Connection[Any], schema: str, *moves: OffsetMove) -> frozenset[int]:
    with conn.transaction():
        return advance_offsets(conn, schema, TOPIC, moves)


def test_first_move_inserts_later_moves_update(
    conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    assert (
        move(conn, pg_schema, OffsetMove(0, None, 10, 0), OffsetMove(1, None, 3, 0)) == frozenset()
    )
    assert move(conn, pg_schema, OffsetMove(0, 10, 25, 10)) == frozenset()
    assert load_offsets(conn, pg_schema, TOPIC) == {0: 25, 1: 3}
    assert load_offsets(conn, pg_schema, TOPIC, [1]) == {1: 3}
    assert load_offsets(conn, pg_schema, "other-topic") == {}


def test_a_stale_expectation_conflicts_and_changes_nothing_once_rolled_back(
    conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    move(conn, pg_schema, OffsetMove(0, None, 10, 0), OffsetMove(1, None, 10, 0))
    with pytest.raises(RuntimeError), conn.transaction():
        conflicts = advance_offsets(
            conn, pg_schema, TOPIC, [OffsetMove(0, 10, 20, 10), OffsetMove(1, 5, 20, 5)]
        )
        assert conflicts == frozenset({1})
        raise RuntimeError("the writer rolls back on any conflict")
    assert load_offsets(conn, pg_schema, TOPIC) == {0: 10, 1: 10}


def test_a_batch_that_does_not_begin_at_the_stored_offset_conflicts_even_if_expected(
    conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    # Stored 10. A batch fetched before a re-seek begins at 30: the caller's
    # expectation (10) is right, but committing it would skip offsets 10..29.
    move(conn, pg_schema, OffsetMove(0, None, 10, 0))
    assert move(conn, pg_schema, OffsetMove(0, 10, 40, 30)) == frozenset({0})
    # Nor may a batch begin before it (offsets 5..9 would be applied twice).
    assert move(conn, pg_schema, OffsetMove(0, 10, 40, 5)) == frozenset({0})
    assert load_offsets(conn, pg_schema, TOPIC) == {0: 10}
    # A stale belief conflicts even for a batch that begins there.
    assert move(conn, pg_schema, OffsetMove(0, 3, 40, 10)) == frozenset({0})
    # The batch that begins exactly at the stored offset, as believed, moves it.
    assert move(conn, pg_schema, OffsetMove(0, 10, 40, 10)) == frozenset()
    assert load_offsets(conn, pg_schema, TOPIC) == {0: 40}


def test_insert_conflicts_when_another_process_inserted_first(
    conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    move(conn, pg_schema, OffsetMove(2, None, 7, 0))
    assert move(conn, pg_schema, OffsetMove(2, None, 9, 0)) == frozenset({2})
    assert load_offsets(conn, pg_schema, TOPIC) == {2: 7}


def test_two_zombies_racing_for_one_partition_only_one_wins(
    pg_dsn: str, conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    move(conn, pg_schema, OffsetMove(0, None, 100, 0))
    results: list[frozenset[int]] = []
    barrier = threading.Barrier(2)

    def contender(target: int) -> None:
        with connect(pg_dsn, autocommit=True) as c, c.transaction():
            barrier.wait()
            results.append(advance_offsets(c, pg_schema, TOPIC, [OffsetMove(0, 100, target, 100)]))
            time.sleep(0.2)  # hold the row lock: the other one waits, then re-checks

    threads = [threading.Thread(target=contender, args=(t,)) for t in (150, 180)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r) for r in results) == [0, 1]
    assert load_offsets(conn, pg_schema, TOPIC)[0] in (150, 180)


def test_a_move_waiting_on_a_schema_swap_lands_in_the_new_schema(
    pg_dsn: str, conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    """What the rebuild's swap relies on (see _rebuild.py)."""
    move(conn, pg_schema, OffsetMove(0, None, 50, 0))
    fresh = f"{pg_schema}_new"
    old = f"{pg_schema}_old"
    apply_migrations(conn, fresh, projection_migrations())
    try:
        move(conn, fresh, OffsetMove(0, None, 50, 0))  # the rebuild copied the live offsets
        outcome: list[frozenset[int]] = []
        with connect(pg_dsn, autocommit=True) as swapper, swapper.transaction():
            swapper.execute(
                sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                    sql.Identifier(pg_schema, "consumer_offsets")
                )
            )

            def live_projector() -> None:
                with connect(pg_dsn, autocommit=True) as c:
                    outcome.append(move(c, pg_schema, OffsetMove(0, 50, 60, 50)))

            thread = threading.Thread(target=live_projector)
            thread.start()
            time.sleep(0.3)  # the live move is now waiting for the lock
            assert thread.is_alive()
            swapper.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    sql.Identifier(pg_schema), sql.Identifier(old)
                )
            )
            swapper.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    sql.Identifier(fresh), sql.Identifier(pg_schema)
                )
            )
        thread.join(10)
        assert outcome == [frozenset()]
        assert load_offsets(conn, pg_schema, TOPIC) == {0: 60}  # the new schema moved
        assert load_offsets(conn, old, TOPIC) == {0: 50}  # the old one did not
    finally:
        for name in (fresh, old):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
