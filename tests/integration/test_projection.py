"""The projection writer against the real PostgreSQL: one scenario per rule.

Each test builds the tables in its own schema with the real migrations, then
applies events through ``Projection.apply`` in transactions, as the consumer
does, and reads the rows back.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from factflow_lineage.consumer import _projection
from factflow_lineage.consumer._projection import Projection
from factflow_lineage.db import connect
from factflow_lineage.errors import LineageError
from factflow_lineage.migrations import apply_migrations, projection_migrations
from tests.support import reference_model
from tests.support.events import T0, Event, EventBuilder, num_uid

pytestmark = pytest.mark.integration

XID = num_uid(1, 0xE)
ROOT, CHILD_A, CHILD_B, GRANDCHILD = (num_uid(i, 0xA) for i in range(1, 5))


@pytest.fixture
def conn(pg_dsn: str, pg_schema: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(pg_dsn, autocommit=True) as c:
        apply_migrations(c, pg_schema, projection_migrations())
        yield c


@pytest.fixture
def proj(pg_schema: str) -> Projection:
    return Projection(pg_schema)


@pytest.fixture
def b() -> EventBuilder:
    return EventBuilder(random.Random(42))


def apply(conn: psycopg.Connection[Any], proj: Projection, *batches: Sequence[Event]) -> None:
    for batch in batches:
        with conn.transaction():
            proj.apply(conn, batch)


def row(conn: psycopg.Connection[Any], schema: str, lid: bytes) -> dict[str, Any]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    found = cur.execute(
        sql.SQL("SELECT * FROM {} WHERE id = %s").format(sql.Identifier(schema, "lineage")),
        (UUID(bytes=lid),),
    ).fetchone()
    assert found is not None, f"no lineage row {UUID(bytes=lid)}"
    return found


def table(conn: psycopg.Connection[Any], schema: str, name: str) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        sql.SQL("SELECT * FROM {} ORDER BY 1, 2, 3").format(sql.Identifier(schema, name))
    ).fetchall()


def stats(conn: psycopg.Connection[Any], schema: str) -> dict[tuple[str, str], tuple[int, ...]]:
    return {
        (r["route_id"], r["adapter_name"]): (
            r["count"], r["completed"], r["failed"], r["cancelled"], r["pending"]
        )
        for r in table(conn, schema, "lineage_stats")
    }  # fmt: skip


def same_as_model(conn: psycopg.Connection[Any], schema: str, events: Iterable[Event]) -> None:
    assert reference_model.dump(conn, schema) == reference_model.project(events)


def start(b: EventBuilder, lid: bytes, parent: bytes | None, at: int, **kw: Any) -> Event:
    kw.setdefault("route_id", "fetch")
    kw.setdefault("adapter_name", "web_scraper" if parent else "sitemap_parser")
    return b.started(lineage_id=lid, execution_id=XID, root_id=ROOT, parent_id=parent, at=at, **kw)


def test_a_child_before_its_parent_makes_a_placeholder(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    child = start(b, CHILD_A, ROOT, T0 + 10)
    apply(conn, proj, [child])
    parent = row(conn, pg_schema, ROOT)
    assert (parent["known"], parent["status"], parent["children_registered"]) == (
        False,
        "pending",
        1,
    )
    assert parent["execution_id"] is None and parent["route_id"] is None
    assert parent["children_pending"] == 1 and not parent["settled"]
    # Placeholders are not counted until known.
    assert stats(conn, pg_schema) == {("fetch", "web_scraper"): (1, 0, 0, 0, 1)}

    root = start(b, ROOT, None, T0)
    apply(conn, proj, [root])
    parent = row(conn, pg_schema, ROOT)
    assert parent["known"] and parent["execution_id"] == UUID(bytes=XID)
    assert parent["children_registered"] == 1
    assert stats(conn, pg_schema)[("fetch", "sitemap_parser")] == (1, 0, 0, 0, 1)
    [x] = table(conn, pg_schema, "executions")
    assert (x["known"], x["status"], x["total"], x["pending"]) == (False, "running", 2, 2)
    same_as_model(conn, pg_schema, [child, root])


def test_a_completion_before_its_start(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    done = b.completed(lineage_id=ROOT, execution_id=XID, at=T0 + 5, children=0)
    apply(conn, proj, [done])
    r = row(conn, pg_schema, ROOT)
    assert (r["known"], r["status"], r["settled"]) == (False, "completed", True)
    assert r["execution_id"] == UUID(bytes=XID) and r["started_at"] is None
    assert stats(conn, pg_schema) == {}
    assert table(conn, pg_schema, "executions") == []

    s = start(b, ROOT, None, T0)
    apply(conn, proj, [s])
    r = row(conn, pg_schema, ROOT)
    assert (r["known"], r["status"], r["settled"], r["route_id"]) == (
        True,
        "completed",
        True,
        "fetch",
    )
    assert stats(conn, pg_schema) == {("fetch", "sitemap_parser"): (1, 1, 0, 0, 0)}
    [x] = table(conn, pg_schema, "executions")
    assert (x["total"], x["completed"], x["unsettled"]) == (1, 1, 0)
    same_as_model(conn, pg_schema, [done, s])


def test_the_same_events_five_times_change_nothing(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    events = [
        b.execution_started(execution_id=XID, at=T0 - 1),
        start(b, ROOT, None, T0),
        start(b, CHILD_A, ROOT, T0 + 1),
        b.completed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 2),
        b.failed(lineage_id=ROOT, execution_id=XID, at=T0 + 3, children=1),
    ]
    apply(conn, proj, events)
    once = reference_model.dump(conn, pg_schema)
    apply(conn, proj, events * 5, *([e] for e in reversed(events)), events, events)
    assert reference_model.dump(conn, pg_schema) == once
    same_as_model(conn, pg_schema, events)


def test_a_parent_done_before_its_children_register_is_not_settled(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    # The race of the guide: the parent's completion (announcing 2 children)
    # is projected before either child's start.
    apply(
        conn,
        proj,
        [
            start(b, ROOT, None, T0),
            b.completed(lineage_id=ROOT, execution_id=XID, at=T0 + 9, children=2),
        ],
    )
    r = row(conn, pg_schema, ROOT)
    assert (r["status"], r["settled"], r["children_pending"]) == ("completed", False, 2)

    apply(conn, proj, [start(b, CHILD_A, ROOT, T0 + 3), start(b, CHILD_B, ROOT, T0 + 6)])
    r = row(conn, pg_schema, ROOT)
    assert (r["children_registered"], r["children_settled"], r["settled"]) == (2, 0, False)

    apply(conn, proj, [b.completed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 20)])
    r = row(conn, pg_schema, ROOT)
    assert (r["children_settled"], r["children_pending"], r["settled"]) == (1, 1, False)

    # Child B announces a grandchild: B settles only once the grandchild does.
    apply(conn, proj, [b.completed(lineage_id=CHILD_B, execution_id=XID, at=T0 + 21, children=1)])
    assert not row(conn, pg_schema, CHILD_B)["settled"]
    assert not row(conn, pg_schema, ROOT)["settled"]
    apply(
        conn,
        proj,
        [
            start(b, GRANDCHILD, CHILD_B, T0 + 15, route_id="store", adapter_name="writer"),
            b.completed(lineage_id=GRANDCHILD, execution_id=XID, at=T0 + 30),
        ],
    )
    assert row(conn, pg_schema, CHILD_B)["settled"]
    r = row(conn, pg_schema, ROOT)
    assert (r["children_settled"], r["children_pending"], r["settled"]) == (2, 0, True)
    [x] = table(conn, pg_schema, "executions")
    assert (x["total"], x["completed"], x["unsettled"], x["settled"]) == (4, 4, 0, False)
    apply(conn, proj, [b.execution_finished(execution_id=XID, at=T0 + 40)])
    [x] = table(conn, pg_schema, "executions")
    assert (x["status"], x["settled"]) == ("completed", True)


def test_more_children_registered_than_announced_are_waited_for(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    apply(
        conn,
        proj,
        [
            start(b, ROOT, None, T0),
            b.completed(lineage_id=ROOT, execution_id=XID, at=T0 + 1, children=1),
            start(b, CHILD_A, ROOT, T0 + 2),
            start(b, CHILD_B, ROOT, T0 + 3),
            b.completed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 4),
        ],
    )
    r = row(conn, pg_schema, ROOT)
    assert (r["children_expected"], r["children_registered"], r["children_pending"]) == (1, 2, 1)
    assert not r["settled"]


def test_failures_are_counted_up_the_chain(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    events = [
        start(b, ROOT, None, T0),
        start(b, CHILD_A, ROOT, T0 + 1),
        start(b, GRANDCHILD, CHILD_A, T0 + 2, route_id="store", adapter_name="writer"),
        b.failed(
            lineage_id=GRANDCHILD,
            execution_id=XID,
            at=T0 + 3,
            error_class="httpx.ReadTimeout",
            error_message="timed out",
            traceback="Traceback...",
        ),
        b.completed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 4, children=1),
        b.completed(lineage_id=ROOT, execution_id=XID, at=T0 + 5, children=1),
    ]
    # Bottom-up and top-down arrival give the same counts.
    apply(conn, proj, *([e] for e in reversed(events)))
    g = row(conn, pg_schema, GRANDCHILD)
    assert g["error"] == {
        "class": "httpx.ReadTimeout",
        "message": "timed out",
        "traceback": "Traceback...",
    }
    assert g["failed_at"] == g["completed_at"] and g["settled"]
    assert row(conn, pg_schema, CHILD_A)["descendants_failed"] == 1
    r = row(conn, pg_schema, ROOT)
    assert (r["descendants_failed"], r["settled"], r["failed_at"]) == (1, True, None)
    assert stats(conn, pg_schema) == {
        ("fetch", "sitemap_parser"): (1, 1, 0, 0, 0),
        ("fetch", "web_scraper"): (1, 1, 0, 0, 0),
        ("store", "writer"): (1, 0, 1, 0, 0),
    }
    [x] = table(conn, pg_schema, "executions")
    assert (x["total"], x["completed"], x["failed"], x["unsettled"]) == (3, 2, 1, 0)
    same_as_model(conn, pg_schema, events)


def test_stats_follow_each_row_from_pending_to_its_outcome(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    kids = [num_uid(100 + i, 0xA) for i in range(42)]
    starts = [start(b, ROOT, None, T0)] + [
        start(b, k, ROOT, T0 + i + 1) for i, k in enumerate(kids)
    ]
    apply(conn, proj, starts)
    assert stats(conn, pg_schema)[("fetch", "web_scraper")] == (42, 0, 0, 0, 42)
    ends = [
        b.terminal("failed" if i < 2 else "completed", lineage_id=k, execution_id=XID, at=T0 + 99)
        for i, k in enumerate(kids)
    ]
    apply(conn, proj, ends[:20], ends[10:], ends)
    assert stats(conn, pg_schema)[("fetch", "web_scraper")] == (42, 40, 2, 0, 0)
    same_as_model(conn, pg_schema, starts + ends)


def test_execution_events_in_any_order(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    replayed = num_uid(9, 0xE)
    events = [
        b.execution_finished(execution_id=XID, at=T0 + 50, status="COMPLETED"),
        start(b, ROOT, None, T0 + 1),
        b.execution_started(
            execution_id=XID, at=T0, pipeline="web_ingest", metadata={"who": "cron"},
            replay_of=replayed, replay_from_stage="fetch",
        ),
        b.execution_finished(execution_id=XID, at=T0 + 40, status="FAILED", error="stage fetch"),
    ]  # fmt: skip
    apply(conn, proj, *([e] for e in events))
    [x] = table(conn, pg_schema, "executions")
    assert (x["pipeline"], x["status"], x["error"]) == ("web_ingest", "failed", "stage fetch")
    assert (x["replay_of"], x["replay_from_stage"]) == (UUID(bytes=replayed), "fetch")
    assert x["metadata"] == {"who": "cron"} and x["known"] and x["total"] == 1
    same_as_model(conn, pg_schema, events)


def test_a_start_that_wins_later_moves_the_row(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    # Two starts for one id (a producer bug): the earliest wins, whenever it
    # arrives, and the counters of the parent and execution it left follow.
    other_x = num_uid(2, 0xE)
    late = start(b, CHILD_A, ROOT, T0 + 5)
    early = b.started(
        lineage_id=CHILD_A, execution_id=other_x, root_id=CHILD_B, parent_id=CHILD_B, at=T0,
        route_id="other", adapter_name="thing",
    )  # fmt: skip
    events = [start(b, ROOT, None, T0), late]
    apply(conn, proj, events)
    assert row(conn, pg_schema, ROOT)["children_registered"] == 1
    apply(conn, proj, [early])
    assert row(conn, pg_schema, ROOT)["children_registered"] == 0
    assert row(conn, pg_schema, CHILD_B)["children_registered"] == 1
    assert ("other", "thing") in stats(conn, pg_schema)
    assert ("fetch", "web_scraper") not in stats(conn, pg_schema)
    same_as_model(conn, pg_schema, [*events, early])


def test_a_placeholder_only_a_losing_start_named_goes_away(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    # Found by hypothesis: the start naming CHILD_B as parent arrives first and
    # makes a placeholder of it; the earlier start, naming no parent, wins
    # later. A fresh projection of both never had CHILD_B: neither may we.
    late = start(b, GRANDCHILD, CHILD_B, T0 + 5)
    early = start(b, GRANDCHILD, None, T0)
    apply(conn, proj, [late])
    assert row(conn, pg_schema, CHILD_B)["children_registered"] == 1
    apply(conn, proj, [early])
    assert not any(r["id"] == UUID(bytes=CHILD_B) for r in table(conn, pg_schema, "lineage"))
    same_as_model(conn, pg_schema, [late, early])
    # A parent with an event of its own stays when its last child leaves.
    done = b.completed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 9)
    moved, winner = start(b, ROOT, CHILD_A, T0 + 1), start(b, ROOT, None, T0)
    apply(conn, proj, [done], [moved], [winner])
    assert row(conn, pg_schema, CHILD_A)["status"] == "completed"
    assert row(conn, pg_schema, CHILD_A)["children_registered"] == 0
    same_as_model(conn, pg_schema, [late, early, done, moved, winner])


def test_rejected_events_are_reported_and_left_out(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    good = start(b, ROOT, None, T0)
    bad = start(b, CHILD_A, ROOT, T0)
    bad["payload"]["route_id"] = None  # a wrong shape (a NUL would be repaired)
    with conn.transaction():
        result = proj.apply(conn, [bad, good, b.event("UNKNOWN", T0, {})])
    assert [r.index for r in result.rejected] == [0]
    assert (result.events, result.ignored, result.lineage_rows) == (3, 1, 1)
    assert [r["id"] for r in table(conn, pg_schema, "lineage")] == [UUID(bytes=ROOT)]


def test_apply_leaves_the_transaction_to_the_caller(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    conn.execute("SET jit = on")
    with pytest.raises(RuntimeError), conn.transaction():
        proj.apply(conn, [start(b, ROOT, None, T0)])
        raise RuntimeError("the consumer failed before its commit")
    assert table(conn, pg_schema, "lineage") == []
    with conn.transaction():
        stats_ = proj.apply(conn, [start(b, ROOT, None, T0)])
        assert conn.execute("SHOW jit").fetchone() == ("on",)
        assert conn.execute("SHOW enable_hashjoin").fetchone() == ("on",)
    assert stats_.rows_touched == 1 and stats_.levels == 0
    assert len(table(conn, pg_schema, "lineage")) == 1


def test_apply_outside_a_transaction_is_refused(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    with pytest.raises(LineageError, match="inside the caller's transaction"):
        proj.apply(conn, [start(b, ROOT, None, T0)])
    assert table(conn, pg_schema, "lineage") == []


def test_two_batches_in_one_transaction(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    first = [start(b, ROOT, None, T0), start(b, CHILD_A, ROOT, T0 + 1)]
    second = [b.completed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 2)]
    with conn.transaction():
        proj.apply(conn, first)
        proj.apply(conn, second)
    same_as_model(conn, pg_schema, first + second)


def test_a_cycle_in_parent_links_loses_its_earliest_rows_link(
    conn: psycopg.Connection[Any], proj: Projection, b: EventBuilder, pg_schema: str
) -> None:
    events = [
        start(b, CHILD_A, CHILD_B, T0 + 1),
        start(b, CHILD_B, CHILD_A, T0),
        b.failed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 2),
    ]
    apply(conn, proj, events)
    got = reference_model.dump(conn, pg_schema)
    want = reference_model.project(events)
    assert got == want, reference_model.differences(want, got)
    broken = row(conn, pg_schema, CHILD_B)
    assert broken["parent_id"] is None
    assert broken["metadata"]["factflow.parent_cycle"]["parent_id"] == str(UUID(bytes=CHILD_A))


def test_a_cycle_stored_by_an_older_release_is_an_error_not_a_hang(
    conn: psycopg.Connection[Any],
    proj: Projection,
    b: EventBuilder,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apply(conn, proj, [start(b, CHILD_A, CHILD_B, T0), start(b, CHILD_B, None, T0)])
    table = sql.Identifier(pg_schema, "lineage")
    conn.execute(
        sql.SQL("UPDATE {} SET parent_id = %s, contrib_parent = %s WHERE id = %s").format(table),
        (UUID(bytes=CHILD_A), UUID(bytes=CHILD_A), UUID(bytes=CHILD_B)),
    )
    conn.execute(
        sql.SQL("UPDATE {} SET children_registered = 1 WHERE id = %s").format(table),
        (UUID(bytes=CHILD_A),),
    )
    monkeypatch.setattr(_projection, "MAX_LEVELS", 30)
    failed = b.failed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 1)
    with pytest.raises(_projection.ParentCycleError, match="cycle") as raised, conn.transaction():
        proj.apply(conn, [failed])
    # The consumer isolates and dead-letters events whose values it cannot use.
    assert isinstance(raised.value, LineageError) and isinstance(raised.value, ValueError)


def test_a_realistic_run_in_stream_order_and_shuffled(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str
) -> None:
    from tests.support.events import RunShape, batches, realistic_run

    rng = random.Random(7)
    events = realistic_run(rng, RunShape(executions=2, roots=6))
    apply(conn, proj, *batches(events, 700))
    want = reference_model.project(events)
    assert reference_model.dump(conn, pg_schema) == want
    status = reference_model.LINEAGE_COLUMNS.index("status")
    assert {r[status] for r in want["lineage"]} >= {"completed", "failed"}
    conn.execute(
        sql.SQL("TRUNCATE {}, {}, {}").format(
            *(sql.Identifier(pg_schema, t) for t in reference_model.TABLES)
        )
    )
    shuffled = events * 2
    rng.shuffle(shuffled)
    apply(conn, proj, *batches(shuffled, 1500))
    assert reference_model.dump(conn, pg_schema) == want


def test_partitions_applied_concurrently_lose_no_update(pg_dsn: str, pg_schema: str) -> None:
    """Three writers, one partition each (by root id, as Kafka keys them), sharing
    the stats and execution rows: no lost update, no deadlock."""
    import threading

    from tests.support.events import RunShape, batches, realistic_run

    events = realistic_run(random.Random(11), RunShape(executions=3, roots=12))
    roots = {
        e["payload"]["lineage_id"]: e["payload"]["root_id"]
        for e in events
        if e["event_type"] == "INVOCATION_STARTED"
    }
    parts: list[list[Event]] = [[], [], []]
    for e in events:
        p = e["payload"]
        # Terminal events carry no root id: their producer keys them like the start.
        key = roots[p["lineage_id"]] if "lineage_id" in p else p["execution_id"]
        parts[key[0] % 3].append(e)
    with connect(pg_dsn, autocommit=True) as c:
        apply_migrations(c, pg_schema, projection_migrations())
    errors: list[BaseException] = []

    def run(part: list[Event]) -> None:
        try:
            with connect(pg_dsn, autocommit=True) as c:
                projection = Projection(pg_schema)
                for batch in batches(part, 300):
                    with c.transaction():
                        projection.apply(c, batch)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(part,)) for part in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with connect(pg_dsn) as c:
        same_as_model(c, pg_schema, events)


def test_planning_apart_from_writing(
    conn: psycopg.Connection[Any], proj: Projection, pg_schema: str, b: EventBuilder
) -> None:
    events = [start(b, ROOT, None, T0), b.completed(lineage_id=ROOT, execution_id=XID, at=T0 + 1)]
    planned = Projection.plan(events)  # no connection needed: a consumer's other thread
    with conn.transaction():
        result = proj.apply_plan(conn, planned)
    assert (result.events, result.lineage_rows, result.rows_touched) == (2, 1, 1)
    same_as_model(conn, pg_schema, events)
