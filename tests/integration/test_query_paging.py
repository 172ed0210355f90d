"""Every row of every listing is reachable by following the pages' own cursors.

Listings sort timed rows first and rows without a timestamp (known only from
their terminal events: no start, ``started_at`` NULL) after them. The
projection here is written by the real projector code from events: timed
rows with many ties in ``started_at``, untimed rows and executions mixed in,
so that small pages end on timed rows, on ties, on the last timed row and on
untimed rows. Through the CLI (``--output json``, following ``next_cursor``)
and the REST API, each listing must reach every row exactly once, in the
listing's order, and end.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from psycopg import sql
from test_api import serving
from typer.testing import CliRunner

from factflow_lineage import cli
from factflow_lineage.config import PostgresSettings, Settings
from factflow_lineage.consumer._projection import Projection
from factflow_lineage.db import connect
from factflow_lineage.migrations import apply_migrations, projection_migrations
from factflow_lineage.query._api import create_app
from factflow_lineage.query._settings import ApiSettings
from tests.support.events import T0, Event, EventBuilder, num_uid

pytestmark = pytest.mark.integration

X_MAIN = num_uid(1, 0xE)
ROOT = num_uid(1, 0xA)
LIMITS = (1, 2, 3, 5, 7)
# Pages a listing may take at most: a loop that does not end is a failure too.
MAX_PAGES = 500

Page = Callable[[dict[str, Any]], dict[str, Any]]


def _events() -> list[Event]:
    """One execution with timed rows (ties included) and untimed ones, and more executions."""
    b = EventBuilder(random.Random(11))
    events: list[Event] = [b.execution_started(execution_id=X_MAIN, at=T0, pipeline="main")]
    events.append(
        b.started(lineage_id=ROOT, execution_id=X_MAIN, at=T0, adapter_name="parser", route_id="r")
    )
    events.append(b.completed(lineage_id=ROOT, execution_id=X_MAIN, at=T0 + 1, children=12))
    # 12 children of ROOT, started four at a time at the same instant (ties).
    for i in range(12):
        lid = num_uid(100 + i, 0xA)
        adapter = "scraper" if i % 2 else "storage"
        events.append(
            b.started(
                lineage_id=lid,
                execution_id=X_MAIN,
                parent_id=ROOT,
                root_id=ROOT,
                at=T0 + 10 + i // 4,
                adapter_name=adapter,
                route_id="r",
            )
        )
        status = "failed" if i % 3 == 0 else "completed"
        events.append(b.terminal(status, lineage_id=lid, execution_id=X_MAIN, at=T0 + 100 + i))
    # 9 rows known only from their terminal events: started_at NULL, some failed
    # (failed_at set: the failure listing sees them timed).
    for i in range(9):
        lid = num_uid(200 + i, 0xA)
        status = "failed" if i % 2 else "completed"
        events.append(b.terminal(status, lineage_id=lid, execution_id=X_MAIN, at=T0 + 50 + i % 3))
    # Executions: timed ones with ties, and ones known only from their finish.
    for i in range(7):
        events.append(b.execution_started(execution_id=num_uid(10 + i, 0xE), at=T0 + 5 + i // 3))
    for i in range(6):
        events.append(
            b.execution_finished(execution_id=num_uid(50 + i, 0xE), at=T0 + 70, status="FAILED")
        )
    return events


@pytest.fixture
def schema(pg_dsn: str, pg_schema: str) -> str:
    with connect(pg_dsn, autocommit=True) as conn:
        apply_migrations(conn, pg_schema, projection_migrations())
        with conn.transaction():
            Projection(pg_schema).apply(conn, _events())
    return pg_schema


def _ids(pg_dsn: str, schema: str, query: str) -> list[str]:
    """The ids a listing must give, in its order, by a plain ORDER BY ... NULLS LAST."""
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        return [str(r[0]) for r in conn.execute(query)]


# (name, CLI args, API path, API params, the listing's rows in order)
_LISTINGS: list[tuple[str, list[str], str, dict[str, str], str]] = [
    (
        "lineage list",
        ["lineage", "list", "--execution", str(UUID(bytes=X_MAIN))],
        "/api/v1/lineage",
        {"execution_id": str(UUID(bytes=X_MAIN))},
        "SELECT id FROM lineage WHERE execution_id = '{x}'"
        " ORDER BY started_at ASC NULLS LAST, id ASC",
    ),
    (
        "lineage list --status failed",
        ["lineage", "list", "--execution", str(UUID(bytes=X_MAIN)), "--status", "failed"],
        "/api/v1/lineage",
        {"execution_id": str(UUID(bytes=X_MAIN)), "status": "failed"},
        "SELECT id FROM lineage WHERE execution_id = '{x}' AND status = 'failed'"
        " ORDER BY started_at ASC NULLS LAST, id ASC",
    ),
    (
        "lineage list --status completed",
        ["lineage", "list", "--execution", str(UUID(bytes=X_MAIN)), "--status", "completed"],
        "/api/v1/lineage",
        {"execution_id": str(UUID(bytes=X_MAIN)), "status": "completed"},
        "SELECT id FROM lineage WHERE execution_id = '{x}' AND status = 'completed'"
        " ORDER BY started_at ASC NULLS LAST, id ASC",
    ),
    (
        "lineage list --adapter scraper",
        ["lineage", "list", "--execution", str(UUID(bytes=X_MAIN)), "--adapter", "scraper"],
        "/api/v1/lineage",
        {"execution_id": str(UUID(bytes=X_MAIN)), "adapter": "scraper"},
        "SELECT id FROM lineage WHERE execution_id = '{x}' AND adapter_name = 'scraper'"
        " ORDER BY started_at ASC NULLS LAST, id ASC",
    ),
    (
        "lineage list --route r",
        ["lineage", "list", "--execution", str(UUID(bytes=X_MAIN)), "--route", "r"],
        "/api/v1/lineage",
        {"execution_id": str(UUID(bytes=X_MAIN)), "route": "r"},
        "SELECT id FROM lineage WHERE execution_id = '{x}' AND route_id = 'r'"
        " ORDER BY started_at ASC NULLS LAST, id ASC",
    ),
    (
        "lineage children",
        ["lineage", "children", str(UUID(bytes=ROOT))],
        f"/api/v1/lineage/{UUID(bytes=ROOT)}/children",
        {},
        "SELECT id FROM lineage WHERE parent_id = '{root}'"
        " ORDER BY started_at ASC NULLS LAST, id ASC",
    ),
    (
        "lineage failures",
        ["lineage", "failures"],
        "/api/v1/lineage/failures",
        {},
        "SELECT id FROM lineage WHERE status = 'failed' ORDER BY failed_at DESC, id DESC",
    ),
    (
        "lineage failures --execution",
        ["lineage", "failures", "--execution", str(UUID(bytes=X_MAIN))],
        "/api/v1/lineage/failures",
        {"execution_id": str(UUID(bytes=X_MAIN))},
        "SELECT id FROM lineage WHERE status = 'failed' AND execution_id = '{x}'"
        " ORDER BY failed_at DESC, id DESC",
    ),
    (
        "execution list",
        ["execution", "list"],
        "/api/v1/executions",
        {},
        "SELECT id FROM executions ORDER BY started_at DESC NULLS LAST, id DESC",
    ),
    (
        "execution list --status running",
        ["execution", "list", "--status", "running"],
        "/api/v1/executions",
        {"status": "running"},
        "SELECT id FROM executions WHERE status = 'running'"
        " ORDER BY started_at DESC NULLS LAST, id DESC",
    ),
    (
        "execution list --status failed",
        ["execution", "list", "--status", "failed"],
        "/api/v1/executions",
        {"status": "failed"},
        "SELECT id FROM executions WHERE status = 'failed'"
        " ORDER BY started_at DESC NULLS LAST, id DESC",
    ),
]
_NAMES = [listing[0] for listing in _LISTINGS]


def _walk(page: Page, params: dict[str, Any]) -> list[str]:
    """Every row id of a listing, following each page's next_cursor until there is none."""
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        doc = page({**params, **({"cursor": cursor} if cursor else {})})
        ids += [r["id"] for r in doc["rows"]]
        cursor = doc["next_cursor"]
        if cursor is None:
            return ids
        assert doc["rows"], "a page with a cursor but no rows"
    raise AssertionError(f"no last page after {MAX_PAGES} pages")


def _check(got: list[str], want: list[str], what: str) -> None:
    assert len(got) == len(set(got)), f"{what}: rows repeated"
    assert set(got) == set(want), f"{what}: {len(set(want) - set(got))} rows never reached"
    assert got == want, f"{what}: out of order"


def test_the_dataset_mixes_timed_and_untimed_rows(pg_dsn: str, schema: str) -> None:
    untimed = _ids(pg_dsn, schema, "SELECT id FROM lineage WHERE started_at IS NULL")
    untimed_x = _ids(pg_dsn, schema, "SELECT id FROM executions WHERE started_at IS NULL")
    assert len(untimed) == 9 and len(untimed_x) == 6


@pytest.mark.parametrize("listing", _LISTINGS, ids=_NAMES)
def test_cli_pages_reach_every_row_once(
    pg_dsn: str, pg_read_dsn: str, schema: str, listing: tuple[Any, ...]
) -> None:
    name, args, _, _, query = listing
    want = _ids(pg_dsn, schema, query.format(x=UUID(bytes=X_MAIN), root=UUID(bytes=ROOT)))
    assert want
    app = cli.mounted_app()
    runner = CliRunner()
    env = {"FACTFLOW_PG_SCHEMA": schema, "FACTFLOW_PG_READ_DSN": pg_read_dsn}

    def page(params: dict[str, Any]) -> dict[str, Any]:
        extra = [f"--{key}={value}" for key, value in params.items()]
        result = runner.invoke(app, [*args, "--output", "json", *extra], env=env)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.exit_code == 0, (result.exception, result.output)
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc

    for limit in LIMITS:
        _check(_walk(page, {"limit": limit}), want, f"{name} --limit {limit}")


@pytest.fixture
def api(schema: str, pg_read_dsn: str) -> Iterator[httpx.Client]:
    settings = Settings(postgres=PostgresSettings(read_dsn=pg_read_dsn, schema=schema))
    with serving(create_app(settings, ApiSettings())) as client:
        yield client


@pytest.mark.parametrize("listing", _LISTINGS, ids=_NAMES)
def test_api_pages_reach_every_row_once(
    pg_dsn: str, schema: str, api: httpx.Client, listing: tuple[Any, ...]
) -> None:
    _, _, path, params, query = listing
    want = _ids(pg_dsn, schema, query.format(x=UUID(bytes=X_MAIN), root=UUID(bytes=ROOT)))

    def page(extra: dict[str, Any]) -> dict[str, Any]:
        response = api.get(path, params={**params, **extra})
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc

    for limit in LIMITS:
        _check(_walk(page, {"limit": limit}), want, f"GET {path} {params} limit={limit}")
