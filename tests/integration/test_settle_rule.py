"""The settle rule for failed and cancelled rows, on the real broker and database.

A completed row waits for every child it announced or has; a failed or
cancelled one only for the children that registered: the outputs it announced
before it ended may never run, and waiting for them would hold it, its
ancestors and its execution unsettled forever.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from factflow_lineage import query
from factflow_lineage.config import Settings
from factflow_lineage.consumer import ProjectorConfig
from factflow_lineage.db import connect
from factflow_lineage.migrations import apply_migrations, projection_migrations
from factflow_lineage.pipeline import catch_up
from factflow_lineage.producer import LineageRecorder, RecorderConfig
from tests.support.events import num_uid

pytestmark = pytest.mark.integration


class Stop(Exception):
    """What the adapter under test raises after announcing its outputs."""


@pytest.mark.parametrize(
    ("end", "registered"),
    [("failed", 0), ("failed", 1), ("cancelled", 0), ("cancelled", 1)],
)
def test_a_failed_row_with_announced_children_that_never_ran_settles(
    settings: Settings, tmp_path: Path, group_id: str, pg_dsn: str, end: str, registered: int
) -> None:
    config = RecorderConfig(
        bootstrap=settings.kafka.bootstrap, topic=settings.kafka.topic, spool_dir=tmp_path
    )
    with LineageRecorder(config) as recorder:
        with recorder.execution(pipeline="settle") as run:
            with recorder.invocation(run, "r", "split", input=b"in") as root:
                ref = root.output(b"one")
            with (
                contextlib.suppress(Stop),
                recorder.invocation(run, "r", "fetch", input=b"one", parent=ref) as mid,
            ):
                refs = [mid.output(n) for n in (b"a", b"b", b"c")]
                for child in refs[:registered]:  # the others never run
                    with recorder.invocation(run, "r", "store", input=b"a", parent=child):
                        pass
                if end == "cancelled":
                    mid.cancel("shutting down")
                else:
                    raise Stop("after announcing three outputs")
        assert recorder.flush(15) == 0
    with connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn, settings.postgres.schema, projection_migrations())
    catch_up(settings, config=ProjectorConfig(group_id=group_id))

    with connect(settings.postgres.read_dsn, schema=settings.postgres.schema) as conn:
        execution = query.get_execution(conn, run.id)
        rows = {r.id: r for r in query.list_lineage(conn, execution=run.id, limit=100).rows}
    row = rows[mid.id]
    assert row.status == end
    assert (row.children_expected, row.children_registered) == (3, registered)
    assert row.settled and row.children_pending == 0
    assert rows[root.id].settled and rows[root.id].children_pending == 0
    assert len(rows) == 2 + registered and all(r.settled for r in rows.values())
    assert execution.status == "completed" and execution.unsettled == 0 and execution.settled


XID = num_uid(1, 0xE)
ROOT, FAILED, CANCELLED, CHILD = (num_uid(i, 0xA) for i in range(1, 5))


def test_migration_0005_settles_rows_the_old_rule_held(pg_dsn: str, pg_schema: str) -> None:
    """A projection made under the old rule: 0005 settles its failed and
    cancelled rows, credits their parents up the chain and recounts executions."""
    with connect(pg_dsn, autocommit=True) as conn:
        old = tuple(m for m in projection_migrations() if m.name != "settle_failed_rows")
        apply_migrations(conn, pg_schema, old)
        lineage = sql.Identifier(pg_schema, "lineage")
        # ROOT completed announcing 2 children; FAILED announced 3 and ran
        # none; CANCELLED announced 2, ran CHILD (completed). As the old rule
        # left them: only CHILD settled.
        rows: list[tuple[Any, ...]] = [
            (ROOT, None, "completed", 2, 2, 0, None, False),
            (FAILED, ROOT, "failed", 3, 0, 0, ROOT, False),
            (CANCELLED, ROOT, "cancelled", 2, 1, 1, ROOT, False),
            (CHILD, CANCELLED, "completed", 0, 0, 0, CANCELLED, True),
        ]
        for lid, parent, status, expected, reg, settled, contrib, contrib_settled in rows:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, execution_id, parent_id, status, children_expected,"
                    " children_registered, children_settled, start_event_id, terminal_event_id,"
                    " contrib_parent, contrib_settled, descendants_failed, contrib_failed)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, gen_random_uuid(),"
                    " gen_random_uuid(), %s, %s, %s, %s)"
                ).format(lineage),
                (
                    _u(lid), _u(XID), _u(parent), status, expected, reg, settled, _u(contrib),
                    contrib_settled, 1 if lid == ROOT else 0, 1 if lid == FAILED else 0,
                ),
            )  # fmt: skip
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, status, start_event_id, total, completed, failed,"
                " cancelled, unsettled) VALUES (%s, 'completed', gen_random_uuid(), 4, 2, 1, 1, 3)"
            ).format(sql.Identifier(pg_schema, "executions")),
            (_u(XID),),
        )
        assert not _settled(conn, pg_schema)[ROOT]
        apply_migrations(conn, pg_schema, projection_migrations())
        assert _settled(conn, pg_schema) == {ROOT: True, FAILED: True, CANCELLED: True, CHILD: True}
        got = conn.execute(
            sql.SQL(
                "SELECT id, children_settled, children_pending, contrib_settled FROM {}"
            ).format(lineage)
        ).fetchall()
        assert {UUID(str(r[0])).bytes: tuple(r[1:]) for r in got} == {
            ROOT: (2, 0, False),
            FAILED: (0, 0, True),
            CANCELLED: (1, 0, True),
            CHILD: (0, 0, True),
        }
        unsettled, settled = conn.execute(
            sql.SQL("SELECT unsettled, settled FROM {}").format(
                sql.Identifier(pg_schema, "executions")
            )
        ).fetchone() or (None, None)
        assert (unsettled, settled) == (0, True)


def _u(b: bytes | None) -> UUID | None:
    return None if b is None else UUID(bytes=b)


def _settled(conn: psycopg.Connection[Any], schema: str) -> dict[bytes, bool]:
    rows = conn.execute(
        sql.SQL("SELECT id, settled FROM {}").format(sql.Identifier(schema, "lineage"))
    ).fetchall()
    return {UUID(str(r[0])).bytes: bool(r[1]) for r in rows}
