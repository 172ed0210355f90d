"""Rebuild by replay: a fresh schema from the topic, swapped in atomically.

A rebuild of the same events yields the same tables as the live projection;
the previous projection is kept (or dropped); and a rebuild swapped in under a
live projector that keeps consuming new events loses and doubles nothing: the
projector carries on in the new schema.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from test_projector_support import (
    assert_same_tables,
    checksums,
    drop_schema,
    produce,
    realistic_events,
    reference_projection,
    running_projector,
    stored_total,
    wait_projected,
)
from typer.testing import CliRunner

from factflow_lineage.config import Settings
from factflow_lineage.consumer import RebuildOptions, RebuildProgress, load_offsets, rebuild
from factflow_lineage.consumer._cli import projection_app
from factflow_lineage.db import connect

WHEN = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TAG = "20260301120000"


def _schemas(dsn: str, prefix: str) -> set[str]:
    with connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (prefix + "%",)
        ).fetchall()
    return {r[0] for r in rows}


def test_a_rebuild_yields_the_live_tables_and_keeps_the_old_schema(
    settings: Settings, group_id: str
) -> None:
    events = realistic_events(8000, seed=21)
    messages = produce(
        settings.kafka.bootstrap, settings.kafka.topic, events, poison={10: b"x", 5000: b"y"}
    )
    pg = settings.postgres
    with running_projector(settings, group_id):
        wait_projected(pg.dsn, pg.schema, settings.kafka.topic, messages)
    live = checksums(pg.dsn, pg.schema)
    progress: list[RebuildProgress] = []
    old = f"{pg.schema}_old_{TAG}"
    try:
        report = rebuild(
            settings,
            RebuildOptions(batch_max=1000, catch_up_lag=0, progress_every=0.0),
            progress=progress.append,
            now=WHEN,
        )
        assert report.old_schema == old and not report.dropped_old
        assert report.events == len(events) and report.dead_letters == 2
        assert sum(report.offsets.values()) == messages
        # The swapped-in schema holds what the live one held, now kept under the old name.
        assert checksums(pg.dsn, pg.schema) == live
        assert_same_tables(pg.dsn, pg.schema, old)
        assert _schemas(pg.dsn, pg.schema) == {pg.schema, old}
        assert progress and progress[-1].phase == "swap" and progress[-1].lag == 0
        assert any(p.phase == "replay" and p.events_per_s > 0 for p in progress)
    finally:
        drop_schema(pg.dsn, old)


def test_rebuild_cli_drops_the_old_schema_and_reports_progress(
    settings: Settings, group_id: str
) -> None:
    events = realistic_events(3000, seed=22)
    messages = produce(settings.kafka.bootstrap, settings.kafka.topic, events)
    pg = settings.postgres
    with running_projector(settings, group_id):
        wait_projected(pg.dsn, pg.schema, settings.kafka.topic, messages)
    live = checksums(pg.dsn, pg.schema)
    env = {
        "FACTFLOW_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "FACTFLOW_TOPIC": settings.kafka.topic,
        "FACTFLOW_PG_DSN": pg.dsn,
        "FACTFLOW_PG_READ_DSN": pg.read_dsn,
        "FACTFLOW_PG_SCHEMA": pg.schema,
    }
    result = CliRunner().invoke(projection_app, ["rebuild", "--drop-old"], env=env)
    assert result.exit_code == 0, result.output
    assert f"rebuilt schema {pg.schema}: {len(events):,} events" in result.output
    assert "swap:" in result.output and "events/s" in result.output  # progress lines
    assert "previous projection was dropped" in result.output
    assert _schemas(pg.dsn, pg.schema) == {pg.schema}
    assert checksums(pg.dsn, pg.schema) == live


def test_rebuild_without_a_live_projection_builds_it(settings: Settings) -> None:
    events = realistic_events(2000, seed=23)
    messages = produce(settings.kafka.bootstrap, settings.kafka.topic, events)
    report = rebuild(settings, RebuildOptions(catch_up_lag=0), now=WHEN)
    assert report.old_schema is None
    pg = settings.postgres
    assert stored_total(pg.dsn, pg.schema, settings.kafka.topic) == messages
    assert checksums(pg.dsn, pg.schema)["lineage"][0] > 0


@pytest.mark.parametrize("catch_up_lag", [0, 50_000], ids=["swap-after-catch-up", "swap-does-all"])
def test_swap_under_a_running_projector_loses_and_doubles_nothing(
    settings: Settings, group_id: str, catch_up_lag: int
) -> None:
    events = realistic_events(20_000, seed=31)
    # Before the rebuild; while it runs (fed in chunks until it is done); after the swap.
    first, during, after = events[:8_000], events[8_000:17_000], events[17_000:]
    pg, topic = settings.postgres, settings.kafka.topic
    produced = produce(settings.kafka.bootstrap, topic, first)
    old = f"{pg.schema}_old_{TAG}"
    outcome: list[Any] = []
    try:
        with running_projector(settings, group_id, batch_max=300) as projector:
            wait_projected(pg.dsn, pg.schema, topic, produced)

            def run_rebuild() -> None:
                try:
                    outcome.append(
                        rebuild(
                            settings,
                            RebuildOptions(batch_max=2000, catch_up_lag=catch_up_lag),
                            now=WHEN,
                        )
                    )
                except BaseException as e:  # reported below
                    outcome.append(e)

            rebuilder = threading.Thread(target=run_rebuild)
            rebuilder.start()
            # The live projector keeps applying new events while the rebuild
            # replays, catches up and swaps...
            for i in range(0, len(during), 500):
                if not rebuilder.is_alive():
                    break
                produced += produce(settings.kafka.bootstrap, topic, during[i : i + 500])
                time.sleep(0.05)
            rebuilder.join(120)
            assert outcome and not isinstance(outcome[0], BaseException), outcome
            report = outcome[0]
            # ... and after the swap, into the new schema.
            total = produced + produce(settings.kafka.bootstrap, topic, after)
            wait_projected(pg.dsn, pg.schema, topic, total, timeout=180)
            assert projector.stats is not None
        assert report.old_schema == old
        with connect(pg.dsn, autocommit=True) as conn:
            old_offsets = sum(load_offsets(conn, old, topic).values())
        assert old_offsets <= produced < total

        reference = f"{pg.schema}_ref"
        try:
            reference_projection(settings, reference, total, f"{group_id}-ref")
            assert_same_tables(pg.dsn, pg.schema, reference)
        finally:
            drop_schema(pg.dsn, reference)
    finally:
        drop_schema(pg.dsn, old)
