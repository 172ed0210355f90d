"""A small, known lineage projection for the query side's tests (CLI and API).

The guide's example, written straight into the projection's tables of a test's
own schema (the migrations build them, the writer role fills them):

execution ``E1`` (pipeline ``sitemap_scraper``, failed), route ``sitemap_scraper``::

    sitemap_parser (root) -> url_expander -> 42 x web_scraper -> 40 x web_content_storage
                                             (2 failed: HTTPError, ParseError)

The 42 web_scraper rows come in two batches of 21, each with one failure, and
start in groups of five at the same instant (ties for keyset pagination). The
two failed rows share their first 8 hex digits (``deadbeef``: an ambiguous
prefix). Execution ``E2`` replays ``E1`` from ``web_scraper`` and is still
running: one completed row, one pending with a pending child, and a
placeholder (known only from its terminal event: no start, no route).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from factflow_lineage.migrations import apply_migrations, projection_migrations

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
E1 = uuid.UUID("e1e1e1e1-0000-4000-8000-000000000001")
E2 = uuid.UUID("e2e2e2e2-0000-4000-8000-000000000002")
FAILED = (
    uuid.UUID("deadbeef-0000-4000-8000-000000000001"),
    uuid.UUID("deadbeef-0000-4000-8000-000000000002"),
)
BATCHES = (
    uuid.UUID("bbbbbbbb-0000-4000-8000-000000000001"),
    uuid.UUID("bbbbbbbb-1111-4000-8000-000000000002"),
)
ROUTE = "sitemap_scraper"
STAGES = ("sitemap_parser", "url_expander", "web_scraper", "web_content_storage")
NIL = uuid.UUID(int=0)


@dataclass
class Dataset:
    """What was loaded: every row by id, and the ids the tests talk about."""

    schema: str
    rows: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    root: uuid.UUID = NIL
    expander: uuid.UUID = NIL
    scrapers: list[uuid.UUID] = field(default_factory=list)
    storage: list[uuid.UUID] = field(default_factory=list)
    replay_done: uuid.UUID = NIL
    replay_pending: uuid.UUID = NIL
    replay_child: uuid.UUID = NIL
    placeholder: uuid.UUID = NIL

    def of(self, execution: uuid.UUID) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r["execution_id"] == execution]


def _key(execution: uuid.UUID, stage: str, ident: uuid.UUID) -> str:
    return f"executions/{execution}/{ROUTE}/{stage}/{ident}"


def build() -> Dataset:
    """The rows, with their counters derived from the tree (as the projector keeps them)."""
    data = Dataset(schema="")

    def add(
        ident: uuid.UUID,
        execution: uuid.UUID,
        stage: str,
        parent: dict[str, Any] | None,
        started: datetime,
        status: str = "completed",
        *,
        batch: uuid.UUID | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        key = _key(execution, stage, ident)
        row: dict[str, Any] = {
            "id": ident,
            "execution_id": execution,
            "root_id": parent["root_id"] if parent else ident,
            "parent_id": parent["id"] if parent else None,
            "route_id": ROUTE,
            "adapter_name": stage,
            "status": status,
            "input_hash": f"sha256:{ident.hex[:16]}",
            "output_hash": None if status != "completed" else f"sha256:{ident.hex[16:]}",
            "error": error,
            "started_at": started,
            "completed_at": None if status == "pending" else started + timedelta(seconds=1),
            "batch_id": batch,
            "input_key": key,
            "metadata": {"input_key": key, "attempt": 1},
            "children": [],
            "known": True,
        }
        data.rows[ident] = row
        if parent is not None:
            parent["children"].append(ident)
        return row

    root = add(uuid.uuid4(), E1, "sitemap_parser", None, T0)
    expander = add(uuid.uuid4(), E1, "url_expander", root, T0 + timedelta(seconds=1))
    data.root, data.expander = root["id"], expander["id"]
    for i in range(42):
        failed_index = {7: 0, 30: 1}.get(i)
        ident = FAILED[failed_index] if failed_index is not None else uuid.uuid4()
        error = None
        if failed_index is not None:
            cls = ("HTTPError", "ParseError")[failed_index]
            error = {
                "class": cls,
                "message": f"{cls}: 503 Service Unavailable for url {i}",
                "traceback": f'Traceback (most recent call last):\n  File "scrape.py"\n{cls}',
            }
        scraper = add(
            ident,
            E1,
            "web_scraper",
            expander,
            T0 + timedelta(seconds=2 + i // 5),
            "failed" if error else "completed",
            batch=BATCHES[i // 21],
            error=error,
        )
        data.scrapers.append(ident)
        if error is None:
            started = T0 + timedelta(seconds=20, milliseconds=10 * i)
            store = add(uuid.uuid4(), E1, "web_content_storage", scraper, started)
            data.storage.append(store["id"])

    done = add(uuid.uuid4(), E2, "web_scraper", None, T0 + timedelta(days=1))
    pending = add(
        uuid.uuid4(), E2, "web_scraper", None, T0 + timedelta(days=1, seconds=1), "pending"
    )
    child = add(
        uuid.uuid4(),
        E2,
        "web_content_storage",
        pending,
        T0 + timedelta(days=1, seconds=2),
        "pending",
    )
    data.replay_done, data.replay_pending, data.replay_child = (
        done["id"],
        pending["id"],
        child["id"],
    )
    placeholder = uuid.uuid4()
    data.rows[placeholder] = {
        "id": placeholder, "execution_id": E2, "root_id": None, "parent_id": None,
        "route_id": None, "adapter_name": None, "status": "completed", "input_hash": None,
        "output_hash": "sha256:late", "error": None, "started_at": None,
        "completed_at": T0 + timedelta(days=1, seconds=5), "batch_id": None, "input_key": None,
        "metadata": None, "children": [], "known": False,
    }  # fmt: skip
    data.placeholder = placeholder
    for row in data.rows.values():
        _derive(data, row)
    return data


def _derive(data: Dataset, row: dict[str, Any]) -> None:
    kids = [data.rows[c] for c in row["children"]]
    row["children_expected"] = None if row["status"] == "pending" else len(kids)
    row["children_registered"] = len(kids)
    row["children_settled"] = sum(1 for k in kids if _settled(data, k))
    row["descendants_failed"] = _failed_below(data, row)


def _settled(data: Dataset, row: dict[str, Any]) -> bool:
    return row["status"] != "pending" and all(_settled(data, data.rows[c]) for c in row["children"])


def _failed_below(data: Dataset, row: dict[str, Any]) -> int:
    return sum(
        (data.rows[c]["status"] == "failed") + _failed_below(data, data.rows[c])
        for c in row["children"]
    )


_COLUMNS = (
    "id, execution_id, root_id, parent_id, route_id, adapter_name, status, input_hash,"
    " output_hash, error, started_at, completed_at, batch_id, input_key, metadata,"
    " children_expected, children_registered, children_settled, descendants_failed,"
    " start_event_id, terminal_event_id"
)


def load(dsn: str, schema: str) -> Dataset:
    """Migrate ``schema`` and write the dataset into it (as the writer role)."""
    data = build()
    data.schema = schema
    with psycopg.connect(dsn) as conn:
        apply_migrations(conn, schema, projection_migrations())
        conn.execute(f'SET search_path TO "{schema}"')
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO lineage ({_COLUMNS}) VALUES ({', '.join(['%s'] * 21)})",
                [
                    (
                        r["id"], r["execution_id"], r["root_id"], r["parent_id"], r["route_id"],
                        r["adapter_name"], r["status"], r["input_hash"], r["output_hash"],
                        Jsonb(r["error"]) if r["error"] else None, r["started_at"],
                        r["completed_at"], r["batch_id"], r["input_key"],
                        Jsonb(r["metadata"]) if r["metadata"] is not None else None,
                        r["children_expected"], r["children_registered"],
                        r["children_settled"], r["descendants_failed"],
                        uuid.uuid4() if r["known"] else None,
                        None if r["status"] == "pending" else uuid.uuid4(),
                    )
                    for r in data.rows.values()
                ],
            )  # fmt: skip
        conn.execute(
            """
            INSERT INTO executions (id, pipeline, status, started_at, finished_at, replay_of,
                                    replay_from_stage, error, metadata, start_event_id)
            VALUES (%s, 'sitemap_scraper', 'failed', %s, %s, NULL, NULL,
                    '2 invocations failed', '{"trigger": "cron"}', gen_random_uuid()),
                   (%s, 'sitemap_scraper', 'running', %s, NULL, %s, 'web_scraper',
                    NULL, '{}', gen_random_uuid())
            """,
            (E1, T0, T0 + timedelta(minutes=1), E2, T0 + timedelta(days=1), E1),
        )
        # Counters as the projector keeps them: known rows by status.
        conn.execute(
            """
            UPDATE executions e SET
                total = c.total, completed = c.completed, failed = c.failed,
                cancelled = c.cancelled, pending = c.pending, unsettled = c.unsettled
            FROM (
                SELECT execution_id,
                       count(*) AS total,
                       count(*) FILTER (WHERE status = 'completed') AS completed,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
                       count(*) FILTER (WHERE status = 'pending') AS pending,
                       count(*) FILTER (WHERE NOT settled) AS unsettled
                FROM lineage WHERE known GROUP BY execution_id
            ) c
            WHERE c.execution_id = e.id
            """
        )
        conn.execute(
            """
            INSERT INTO lineage_stats
            SELECT execution_id, route_id, adapter_name, count(*),
                   count(*) FILTER (WHERE status = 'completed'),
                   count(*) FILTER (WHERE status = 'failed'),
                   count(*) FILTER (WHERE status = 'cancelled'),
                   count(*) FILTER (WHERE status = 'pending')
            FROM lineage WHERE known GROUP BY 1, 2, 3
            """
        )
    return data
