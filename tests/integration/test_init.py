"""`factflow init` against the real broker and database, through the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
from confluent_kafka.admin import AdminClient, ConfigResource


def _factflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factflow_lineage", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_init_twice_creates_then_changes_nothing(
    kafka_bootstrap: str, pg_dsn: str, pg_schema: str
) -> None:
    topic = f"test.init.{uuid.uuid4().hex[:10]}"
    env = {
        "FACTFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FACTFLOW_TOPIC": topic,
        "FACTFLOW_TOPIC_PARTITIONS": "4",
        "FACTFLOW_PG_SCHEMA": pg_schema,
    }
    first = _factflow(env, "init")
    assert first.returncode == 0, first.stderr
    assert f"topic {topic}: created with 4 partitions" in first.stdout
    assert f"schema {pg_schema}: applied 0001_" in first.stdout

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(topic, timeout=10)
    assert len(metadata.topics[topic].partitions) == 4
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["retention.ms"].value == "-1"

    with psycopg.connect(pg_dsn) as conn:
        applied = conn.execute(f'SELECT count(*) FROM "{pg_schema}".schema_migrations').fetchone()
    assert applied is not None and applied[0] >= 1

    second = _factflow(env, "init")
    assert second.returncode == 0, second.stderr
    assert "exists (4 partitions), unchanged" in second.stdout
    assert "up to date" in second.stdout
    assert "init: nothing to do" in second.stdout
    admin.delete_topics([topic])


def test_init_with_kafka_down_is_one_line_not_a_traceback(pg_schema: str) -> None:
    result = _factflow(
        {"FACTFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:1", "FACTFLOW_PG_SCHEMA": pg_schema},
        "init",
        "--skip-db",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("factflow: error: Kafka at 127.0.0.1:1")
