"""Outages: PostgreSQL or the Kafka broker restarted under a running projector.

The projector (a child process) must not crash: it waits with backoff, says so
once in its log ("... unavailable ..." going down, "... available again ..."
coming back), resumes, and ends with the tables of an uninterrupted run:
nothing lost, nothing doubled. Each test breaks a private instance of its own
(``private_postgres`` / ``private_kafka``), never the shared stack.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from test_projector_support import (
    ProjectorProcess,
    assert_same_tables,
    drop_schema,
    migrate,
    produce,
    realistic_events,
    reference_projection,
    stored_total,
    wait_projected,
)

from factflow_lineage.config import KafkaSettings, PostgresSettings, Settings
from support.private_stack import PrivateKafka, PrivatePostgres


def _wait_progress(settings: Settings, proc: ProjectorProcess, at_least: int) -> int:
    pg, topic = settings.postgres, settings.kafka.topic
    deadline = time.monotonic() + 90
    while (done := stored_total(pg.dsn, pg.schema, topic)) < at_least:
        assert proc.alive(), proc.log()
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.05)
    return done


def _count(log: str, text: str) -> int:
    return sum(1 for line in log.splitlines() if text in line)


@pytest.mark.parametrize(
    "how", ["stop", pytest.param("kill", marks=pytest.mark.slow)], ids=["restart", "crash"]
)
def test_postgres_restart_mid_run_loses_and_doubles_nothing(
    private_postgres: PrivatePostgres,
    kafka_bootstrap: str,
    new_topic: object,
    group_id: str,
    tmp_path: Path,
    how: str,
) -> None:
    topic = new_topic()  # type: ignore[operator]
    schema = f"fault_{uuid.uuid4().hex[:10]}"
    settings = Settings(
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic=topic),
        postgres=PostgresSettings(
            dsn=private_postgres.dsn, read_dsn=private_postgres.read_dsn, schema=schema
        ),
    )
    events = realistic_events(24_000, seed=51)
    half = len(events) // 2
    messages = produce(kafka_bootstrap, topic, events[:half], poison={300: b"bad"})
    migrate(settings.postgres.dsn, schema)
    proc = ProjectorProcess(settings, group_id, tmp_path, "projector", "--batch-max", "300")
    try:
        reached = _wait_progress(settings, proc, messages // 4)
        assert reached < messages, "finished before the outage: nothing tested"
        getattr(private_postgres, how)()
        # Events keep arriving while the database is away.
        messages += produce(kafka_bootstrap, topic, events[half:])
        time.sleep(2.0)
        assert proc.alive(), proc.log()
        private_postgres.start()
        wait_projected(settings.postgres.dsn, schema, topic, messages, timeout=180)
        assert proc.terminate() == 0, proc.log()
    finally:
        proc.ensure_stopped()
    log = proc.log()
    assert _count(log, "PostgreSQL unavailable, retrying in") == 1, log
    assert _count(log, "PostgreSQL available again") == 1, log
    assert "Traceback" not in log

    reference = f"{schema}_ref"
    try:
        reference_projection(settings, reference, messages, f"{group_id}-ref")
        tables = assert_same_tables(settings.postgres.dsn, schema, reference)
        assert tables["dead_letters"][0] == 1
    finally:
        drop_schema(settings.postgres.dsn, reference)
        drop_schema(settings.postgres.dsn, schema)


def test_broker_restart_mid_run_loses_and_doubles_nothing(
    private_kafka: PrivateKafka,
    pg_dsn: str,
    pg_schema: str,
    group_id: str,
    tmp_path: Path,
    settings: Settings,
) -> None:
    topic = f"fault.{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": private_kafka.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(30)
    settings = replace(
        settings,
        kafka=KafkaSettings(bootstrap=private_kafka.bootstrap, topic=topic),
        postgres=replace(settings.postgres, schema=pg_schema),
    )
    events = realistic_events(24_000, seed=52)
    half = len(events) // 2
    messages = produce(private_kafka.bootstrap, topic, events[:half], poison={77: b"bad"})
    migrate(pg_dsn, pg_schema)
    proc = ProjectorProcess(settings, group_id, tmp_path, "projector", "--batch-max", "300")
    try:
        reached = _wait_progress(settings, proc, messages // 4)
        assert reached < messages, "finished before the outage: nothing tested"
        private_kafka.stop()
        time.sleep(2.0)
        assert proc.alive(), proc.log()
        private_kafka.start()
        # Events written after the broker came back must be projected too.
        messages += produce(private_kafka.bootstrap, topic, events[half:])
        wait_projected(pg_dsn, pg_schema, topic, messages, timeout=180)
        assert proc.terminate() == 0, proc.log()
    finally:
        proc.ensure_stopped()
    log = proc.log()
    # One line per state change: an all-brokers-down error delivered after the
    # recovery it predates is checked against the cluster and not reported.
    changes = re.findall(r"Kafka (unavailable|available again)", log)
    assert changes == ["unavailable", "available again"], log
    assert "Traceback" not in log

    reference = f"{pg_schema}_ref"
    try:
        reference_projection(settings, reference, messages, f"{group_id}-ref")
        tables = assert_same_tables(pg_dsn, pg_schema, reference)
        assert tables["dead_letters"][0] == 1
    finally:
        drop_schema(pg_dsn, reference)
