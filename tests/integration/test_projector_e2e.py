"""The projector end to end: real broker, real PostgreSQL, real projection.

Events of realistic runs go through Kafka; the projected tables must equal a
direct application of the same events. Poison goes to the dead-letter table and
its partition moves on. ``status`` shows the lag; SIGTERM ends a projector
cleanly (exit 0) and a restart neither loses nor repeats anything.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from test_projector_support import (
    ProjectorProcess,
    assert_same_tables,
    checksums,
    drop_schema,
    migrate,
    produce,
    realistic_events,
    running_projector,
    stored_total,
    wait_projected,
)
from typer.testing import CliRunner

from factflow_lineage.config import Settings
from factflow_lineage.consumer._cli import dlq_app, projector_app
from factflow_lineage.consumer._projection import Projection
from factflow_lineage.db import connect
from factflow_lineage.schemas import encode


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "FACTFLOW_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "FACTFLOW_TOPIC": settings.kafka.topic,
        "FACTFLOW_PG_DSN": settings.postgres.dsn,
        "FACTFLOW_PG_READ_DSN": settings.postgres.read_dsn,
        "FACTFLOW_PG_SCHEMA": settings.postgres.schema,
    }


def test_projected_tables_equal_a_direct_apply_of_the_same_events(
    settings: Settings, group_id: str
) -> None:
    events = realistic_events(6000, seed=11)
    messages = produce(settings.kafka.bootstrap, settings.kafka.topic, events)
    pg = settings.postgres
    direct = f"{pg.schema}_direct"
    try:
        migrate(pg.dsn, direct)
        with connect(pg.dsn, autocommit=True) as conn, conn.transaction():
            Projection(direct).apply(conn, events)
        with running_projector(settings, group_id, batch_max=500) as projector:
            wait_projected(pg.dsn, pg.schema, settings.kafka.topic, messages)
        assert projector.stats is not None
        assert projector.stats.events == len(events)
        assert projector.stats.transactions > 1
        assert_same_tables(pg.dsn, pg.schema, direct, skip=("consumer_offsets", "dead_letters"))
    finally:
        drop_schema(pg.dsn, direct)


def _poison(valid: dict[str, Any]) -> dict[str, bytes | None]:
    good = encode(valid)
    unknown = b"\xc3\x01" + struct.pack("<Q", 0xDEADBEEF) + good[10:]
    # A value the tables cannot hold (a NUL) is repaired, not poison; a row
    # named its own parent is (a cycle no counter could settle).
    own_parent = dict(
        valid, payload=dict(valid["payload"], parent_id=valid["payload"]["lineage_id"])
    )
    return {
        "garbage": b"\x00\x01 definitely not avro",
        "unknown schema": unknown,
        "truncated": good[:-5],
        "tombstone": None,
        "its own parent": encode(own_parent),
    }


def test_poison_goes_to_dead_letters_and_the_partition_moves_on(
    settings: Settings, group_id: str
) -> None:
    events = realistic_events(3000, seed=5)
    started = next(e for e in events if e["event_type"] == "INVOCATION_STARTED")
    poison = _poison(started)
    topic = settings.kafka.topic
    # All poison into one partition, between good events of that partition.
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for raw in poison.values():
        producer.produce(topic, raw, key=b"k", partition=1)
    producer.flush(30)
    messages = produce(settings.kafka.bootstrap, topic, events) + len(poison)
    pg = settings.postgres
    with running_projector(settings, group_id):
        wait_projected(pg.dsn, pg.schema, topic, messages)
    with connect(pg.dsn, autocommit=True) as conn:
        letters = conn.execute(
            f'SELECT partition, "offset", raw, error FROM "{pg.schema}".dead_letters '
            'ORDER BY "offset"'
        ).fetchall()
        projected = conn.execute(f'SELECT count(*) FROM "{pg.schema}".lineage').fetchone()
    assert [(p, o) for p, o, _, _ in letters] == [(1, o) for o in range(len(poison))]
    assert [None if r is None else bytes(r) for _, _, r, _ in letters] == list(poison.values())
    errors = [e for _, _, _, e in letters]
    assert errors[0].startswith("DecodeError")
    assert errors[1].startswith("UnknownSchemaError")
    assert errors[2].startswith("DecodeError")
    assert "tombstone" in errors[3]
    assert errors[4].startswith("rejected by the projection")
    starts = sum(1 for e in events if e["event_type"] == "INVOCATION_STARTED")
    assert projected is not None and projected[0] == starts

    runner = CliRunner()
    table = runner.invoke(dlq_app, ["list", "--limit", "3"], env=cli_env(settings))
    assert table.exit_code == 0, table.output
    lines = table.output.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "RECEIVED", "PARTITION", "OFFSET"]
    assert len(lines) == 4  # header + the 3 newest
    as_json = runner.invoke(dlq_app, ["list", "--output", "json"], env=cli_env(settings))
    assert as_json.exit_code == 0, as_json.output
    listed = json.loads(as_json.output)
    assert sorted(d["offset"] for d in listed) == list(range(len(poison)))
    assert {d["partition"] for d in listed} == {1}


def test_status_shows_the_lag_of_each_partition(settings: Settings, group_id: str) -> None:
    events = realistic_events(1500, seed=3)
    messages = produce(settings.kafka.bootstrap, settings.kafka.topic, events)
    pg = settings.postgres
    migrate(pg.dsn, pg.schema)
    runner = CliRunner()

    def status() -> dict[str, Any]:
        result = runner.invoke(projector_app, ["status", "--output", "json"], env=cli_env(settings))
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.output))

    before = status()
    assert before["total_lag"] == messages
    assert [p["stored_offset"] for p in before["partitions"]] == [None, None, None]
    with running_projector(settings, group_id):
        wait_projected(pg.dsn, pg.schema, settings.kafka.topic, messages)
    after = status()
    assert after["total_lag"] == 0
    assert sum(p["stored_offset"] or 0 for p in after["partitions"]) == messages
    table = runner.invoke(projector_app, ["status"], env=cli_env(settings))
    assert "total lag: 0" in table.output


def test_sigterm_finishes_the_batch_exits_zero_and_a_restart_repeats_nothing(
    settings: Settings, group_id: str, tmp_path: Path
) -> None:
    events = realistic_events(20_000, seed=8)
    messages = produce(settings.kafka.bootstrap, settings.kafka.topic, events)
    pg, topic = settings.postgres, settings.kafka.topic
    migrate(pg.dsn, pg.schema)
    first = ProjectorProcess(settings, group_id, tmp_path, "first", "--batch-max", "500")
    try:
        deadline = time.monotonic() + 60
        while stored_total(pg.dsn, pg.schema, topic) < messages // 10:
            assert first.alive(), first.log()
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.05)
        asked = time.monotonic()
        assert first.terminate() == 0, first.log()
        assert time.monotonic() - asked < 10
        log = first.log()
        assert "received SIGTERM: finishing the batch in hand" in log
        assert "projector stopped" in log
        stopped_at = stored_total(pg.dsn, pg.schema, topic)
        assert stopped_at < messages, "stopped too late to prove anything"
    finally:
        first.ensure_stopped()
    second = ProjectorProcess(settings, group_id, tmp_path, "second")
    try:
        wait_projected(pg.dsn, pg.schema, topic, messages)
        second.wait_ready()
        assert second.terminate() == 0, second.log()
    finally:
        second.ensure_stopped()
    reference = f"{pg.schema}_ref"
    try:
        migrate(pg.dsn, reference)
        with connect(pg.dsn, autocommit=True) as conn, conn.transaction():
            Projection(reference).apply(conn, events)
        assert_same_tables(pg.dsn, pg.schema, reference, skip=("consumer_offsets", "dead_letters"))
        assert checksums(pg.dsn, pg.schema)["dead_letters"][0] == 0
    finally:
        drop_schema(pg.dsn, reference)


def test_an_unknown_schema_is_reported_as_one_line(tmp_path: Path) -> None:
    """Config errors end the service with exit code 2 and one line, not a traceback."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FACTFLOW_PG_SCHEMA="Not-A-Schema")
    result = subprocess.run(
        [sys.executable, "-m", "factflow_lineage.consumer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid schema name" in result.stderr
    assert "Traceback" not in result.stderr
