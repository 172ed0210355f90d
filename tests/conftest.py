"""Fixtures shared by every test.

Integration tests (everything under tests/integration) talk to the real Kafka
broker and the real PostgreSQL that ``scripts/stack up`` starts (or that the
FACTFLOW_* variables point at). When the stack is down they skip locally, and
fail under CI=true: in CI a skipped integration test would be a lie.

Each test gets its own topic, consumer group and PostgreSQL schema from the
factories below, so tests never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from factflow_lineage.config import KafkaSettings, PostgresSettings, Settings
from support import private_stack
from support.private_stack import PrivateKafka, PrivatePostgres

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "scripts" / "stack"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

_ENV = Settings.from_env()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    integration_dir = REPO / "tests" / "integration"
    for item in items:
        if integration_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def _unavailable(what: str, why: str) -> None:
    message = f"{what} is not reachable ({why}); start it with `scripts/stack up`"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The real broker's bootstrap address, checked once per session."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": _ENV.kafka.bootstrap})
    try:
        metadata = admin.list_topics(timeout=10)
    except KafkaException as e:
        _unavailable(f"Kafka at {_ENV.kafka.bootstrap}", str(e))
    if not metadata.brokers:
        _unavailable(f"Kafka at {_ENV.kafka.bootstrap}", "no broker in metadata")
    return _ENV.kafka.bootstrap


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: ``new_topic(partitions=3)`` creates a topic only this test uses."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(partitions: int = 3, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, config={"retention.ms": "-1"})],
            operation_timeout=15,
        )
        futures[name].result(timeout=20)
        created.append(name)
        return name

    yield make
    if created:
        for future in admin.delete_topics(created, operation_timeout=15).values():
            # Cleanup only: a leftover test topic harms nothing.
            with contextlib.suppress(Exception):
                future.result(timeout=20)


@pytest.fixture
def group_id() -> str:
    """A consumer group only this test uses."""
    return f"test-group-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The writer (projector) DSN of the real PostgreSQL, checked once per session."""
    try:
        with psycopg.connect(_ENV.postgres.dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as e:
        _unavailable("PostgreSQL", str(e).strip().splitlines()[0])
    return _ENV.postgres.dsn


@pytest.fixture(scope="session")
def pg_read_dsn(pg_dsn: str) -> str:
    """The read-only (query side) DSN."""
    return _ENV.postgres.read_dsn


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL schema name only this test uses; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def _private_kafka_instance(kafka_bootstrap: str) -> Iterator[PrivateKafka]:
    instance = private_stack.private_kafka()
    yield instance
    instance.destroy()


@pytest.fixture
def private_kafka(_private_kafka_instance: PrivateKafka) -> PrivateKafka:
    """A broker of this session's own, for outage and crash tests: .bootstrap,
    .stop(), .start(), .kill(). Running at the start of every test that asks."""
    if not _private_kafka_instance.running:
        _private_kafka_instance.start()
    return _private_kafka_instance


@pytest.fixture(scope="session")
def _private_postgres_instance(pg_dsn: str) -> Iterator[PrivatePostgres]:
    instance = private_stack.private_postgres()
    yield instance
    instance.destroy()


@pytest.fixture
def private_postgres(_private_postgres_instance: PrivatePostgres) -> PrivatePostgres:
    """A PostgreSQL of this session's own (same roles and database): .dsn,
    .read_dsn, .stop(), .start(), .kill(). Running at the start of every test."""
    if not _private_postgres_instance.running:
        _private_postgres_instance.start()
    return _private_postgres_instance


@pytest.fixture
def settings(kafka_bootstrap: str, new_topic: Callable[..., str], pg_schema: str) -> Settings:
    """Settings pointed at this test's own topic and schema on the real stack."""
    return Settings(
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic=new_topic(), partitions=3),
        postgres=PostgresSettings(
            dsn=_ENV.postgres.dsn, read_dsn=_ENV.postgres.read_dsn, schema=pg_schema
        ),
    )
