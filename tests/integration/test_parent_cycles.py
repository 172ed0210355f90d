"""Parent cycles: the projection never holds one, and every traversal survives one.

A cycle of parent links (A names B, B names A) comes only from a corrupt or
hostile producer. The projector drops the link of the cycle's row with the
earliest start (see ``consumer/_cycles.py``) whatever the batching, and notes
the dropped link in that row's metadata. Data written by older releases may
still hold a cycle: the chain, the children and the tree of the CLI and API
then stop at the rows already seen, and answer with distinct rows, bounded.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from psycopg import sql
from test_api import serving
from test_projector_support import produce, running_projector, wait_projected
from typer.testing import CliRunner, Result

from factflow_lineage import cli
from factflow_lineage.config import PostgresSettings, Settings
from factflow_lineage.consumer._projection import Projection
from factflow_lineage.db import connect
from factflow_lineage.migrations import apply_migrations, projection_migrations
from factflow_lineage.query._api import create_app
from factflow_lineage.query._settings import ApiSettings
from tests.support import reference_model
from tests.support.events import T0, Event, EventBuilder, num_uid

pytestmark = pytest.mark.integration

XID = num_uid(1, 0xE)
ROOT, A, B, C, D, SELF = (num_uid(i, 0xA) for i in range(1, 7))
NOTE = "factflow.parent_cycle"


def _start(b: EventBuilder, lid: bytes, parent: bytes | None, at: int) -> Event:
    return b.started(
        lineage_id=lid, execution_id=XID, parent_id=parent, root_id=ROOT, at=at, route_id="r"
    )


def _u(lid: bytes) -> str:
    return str(UUID(bytes=lid))


def _cli(schema: str, read_dsn: str, *args: str) -> Result:
    env = {"FACTFLOW_PG_SCHEMA": schema, "FACTFLOW_PG_READ_DSN": read_dsn}
    result = CliRunner().invoke(cli.mounted_app(), list(args), env=env)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result


def _parents(dsn: str, schema: str) -> dict[str, str | None]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, parent_id FROM {}").format(sql.Identifier(schema, "lineage"))
        ).fetchall()
    return {str(i): None if p is None else str(p) for i, p in rows}


def _cycles(parents: dict[str, str | None]) -> list[str]:
    """Rows from which following parent links comes back to a row already passed."""
    looping = []
    for start in parents:
        seen: set[str] = set()
        at: str | None = start
        while at is not None and at in parents:
            if at in seen:
                looping.append(start)
                break
            seen.add(at)
            at = parents[at]
    return looping


# --- a cycle planted in the table (data of an older release) ---------------------------


@pytest.fixture
def planted(pg_dsn: str, pg_schema: str) -> str:
    """ROOT -> A -> B -> C -> D projected, then A's parent set to C and SELF its own parent.

    Parent links then run A -> C -> B -> A (a cycle of three) with D below C,
    ROOT apart, and SELF -> SELF.
    """
    b = EventBuilder(random.Random(1))
    events = [
        _start(b, ROOT, None, T0),
        _start(b, A, ROOT, T0 + 1),
        _start(b, B, A, T0 + 2),
        _start(b, C, B, T0 + 3),
        _start(b, D, C, T0 + 4),
        _start(b, SELF, None, T0 + 5),
        b.failed(lineage_id=D, execution_id=XID, at=T0 + 9),
    ]
    with connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn, pg_schema, projection_migrations())
        with conn.transaction():
            Projection(pg_schema).apply(conn, events)
        table = sql.Identifier(pg_schema, "lineage")
        conn.execute(
            sql.SQL("UPDATE {} SET parent_id = %s WHERE id = %s").format(table),
            (UUID(bytes=C), UUID(bytes=A)),
        )
        conn.execute(
            sql.SQL("UPDATE {} SET parent_id = id WHERE id = %s").format(table), (UUID(bytes=SELF),)
        )
    assert sorted(_cycles(_parents(pg_dsn, pg_schema))) == sorted(map(_u, (A, B, C, D, SELF)))
    return pg_schema


@pytest.mark.parametrize("target", [A, B, C, D], ids=["A", "B", "C", "D"])
def test_the_chain_of_a_planted_cycle_is_bounded_and_distinct(
    planted: str, pg_read_dsn: str, target: bytes
) -> None:
    result = _cli(planted, pg_read_dsn, "lineage", "chain", _u(target), "--output", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ids = [n["id"] for n in doc["nodes"]]
    assert len(ids) == len(set(ids))
    # Every row of the cycle, D below C, never ROOT (no row of the cycle names it).
    assert set(ids) == set(map(_u, (A, B, C, D))) and doc["truncated"] is False
    tree = _cli(planted, pg_read_dsn, "lineage", "chain", _u(target))
    assert tree.exit_code == 0, tree.output
    lines = tree.stdout.splitlines()
    assert "cycle" in tree.stdout
    assert sum(1 for line in lines if _u(target) in line and "this row" in line) == 1
    assert lines[-1] == "4 rows in the chain, 1 failed"


def test_a_planted_self_parent_is_one_row(planted: str, pg_read_dsn: str) -> None:
    result = _cli(planted, pg_read_dsn, "lineage", "chain", _u(SELF), "--output", "json")
    assert result.exit_code == 0, result.output
    assert [n["id"] for n in json.loads(result.stdout)["nodes"]] == [_u(SELF)]
    tree = _cli(planted, pg_read_dsn, "lineage", "chain", _u(SELF))
    assert tree.exit_code == 0 and "cycle" in tree.stdout, tree.output
    children = _cli(planted, pg_read_dsn, "lineage", "children", _u(SELF), "--output", "json")
    assert children.exit_code == 0, children.output


@pytest.fixture
def api(planted: str, pg_read_dsn: str) -> Iterator[httpx.Client]:
    settings = Settings(postgres=PostgresSettings(read_dsn=pg_read_dsn, schema=planted))
    with serving(create_app(settings, ApiSettings())) as client:
        yield client


def test_the_api_answers_a_planted_cycle_bounded(api: httpx.Client) -> None:
    for target in (A, D, SELF):
        response = api.get(f"/api/v1/lineage/{_u(target)}/chain", params={"max_nodes": 100_000})
        assert response.status_code == 200, response.text
        ids = [n["id"] for n in response.json()["nodes"]]
        assert len(ids) == len(set(ids)) <= 4 and len(response.content) < 20_000
    small = api.get(f"/api/v1/lineage/{_u(A)}/chain", params={"max_nodes": 2})
    assert small.status_code == 200 and len(small.json()["nodes"]) == 2
    assert small.json()["truncated"] is True
    assert (
        api.get(f"/api/v1/lineage/{_u(A)}/chain", params={"max_nodes": 100_001}).status_code == 422
    )
    children = api.get(f"/api/v1/lineage/{_u(C)}/children")
    assert children.status_code == 200
    assert sorted(r["id"] for r in children.json()["rows"]) == sorted(map(_u, (A, D)))


# --- a cycle closed across batches, through the real broker and projector -------------


@pytest.mark.parametrize("closing_is_earliest", [True, False], ids=["closing", "stored"])
def test_a_cycle_across_batches_is_never_stored(
    settings: Settings, group_id: str, pg_read_dsn: str, closing_is_earliest: bool
) -> None:
    """A names B in one batch, B names A in the next: the earliest start's link goes.

    Whichever of the two links arrives last, the tables are those of the
    reference model (the same for any order and batching): the row of the
    cycle with the earliest start keeps no parent, with the link it named
    noted in its metadata; the other row is its child.
    """
    b = EventBuilder(random.Random(5))
    first_at, second_at = (T0 + 10, T0) if closing_is_earliest else (T0, T0 + 10)
    first = [
        b.execution_started(execution_id=XID, at=T0 - 1),
        _start(b, A, B, first_at),
        b.completed(lineage_id=A, execution_id=XID, at=T0 + 20, children=1),
        # A grandchild below A: the closing start's row has children to count.
        _start(b, C, A, T0 + 30),
        b.failed(lineage_id=C, execution_id=XID, at=T0 + 31),
    ]
    second = [
        _start(b, B, A, second_at),
        b.completed(lineage_id=B, execution_id=XID, at=T0 + 21, children=1),
    ]
    kafka, pg = settings.kafka, settings.postgres
    written = produce(kafka.bootstrap, kafka.topic, first)
    with running_projector(settings, group_id):
        wait_projected(pg.dsn, pg.schema, kafka.topic, written)
    written += produce(kafka.bootstrap, kafka.topic, second)
    with running_projector(settings, group_id):
        wait_projected(pg.dsn, pg.schema, kafka.topic, written)

    parents = _parents(pg.dsn, pg.schema)
    assert _cycles(parents) == []
    earliest, other = (B, A) if closing_is_earliest else (A, B)
    assert parents[_u(earliest)] is None and parents[_u(other)] == _u(earliest)
    with connect(pg.dsn, autocommit=True) as conn:
        letters = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(pg.schema, "dead_letters"))
        ).fetchone()
        assert letters == (0,)
        got = reference_model.dump(conn, pg.schema)
    want = reference_model.project([*first, *second])
    assert got == want, reference_model.differences(want, got)

    shown = _cli(pg.schema, pg_read_dsn, "lineage", "get", _u(earliest), "--output", "json")
    assert shown.exit_code == 0, shown.output
    note: dict[str, Any] = json.loads(shown.stdout)["metadata"][NOTE]
    assert note["parent_id"] == _u(other) and "cycle" in note["reason"]
    chain = _cli(pg.schema, pg_read_dsn, "lineage", "chain", _u(A), "--output", "json")
    assert chain.exit_code == 0, chain.output
    ids = [n["id"] for n in json.loads(chain.stdout)["nodes"]]
    tree = _cli(pg.schema, pg_read_dsn, "lineage", "chain", _u(earliest))
    assert tree.exit_code == 0 and f"(parent {_u(other)} dropped: a parent cycle)" in tree.stdout
    if closing_is_earliest:  # B -> A -> C: A's ancestor, A, its child
        assert ids == [_u(B), _u(A), _u(C)]
    else:  # A -> {B, C}: A is the root, B and C its children
        assert ids[0] == _u(A) and sorted(ids[1:]) == sorted([_u(B), _u(C)])
