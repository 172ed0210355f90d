"""The private instances that outage tests rely on: really separate, really
stopped, and back with their data (the same scripts/stack that runs the shared
stack, so this also covers its stop/kill/start)."""

from __future__ import annotations

import logging
import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from support.private_stack import PrivateKafka, PrivatePostgres

pytestmark = pytest.mark.slow

_LOGGER = logging.getLogger("factflow_lineage.kafka")


def _config(bootstrap: str, **extra: str) -> dict[str, object]:
    return {"bootstrap.servers": bootstrap, "logger": _LOGGER, **extra}


def _brokers(bootstrap: str) -> int:
    return len(AdminClient(_config(bootstrap)).list_topics(timeout=5).brokers)


def _first_message(bootstrap: str, topic: str) -> bytes | None:
    consumer = Consumer(
        _config(bootstrap, **{"group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and not message.error():
                value: bytes | None = message.value()
                return value
    finally:
        consumer.close()
    return None


def test_private_kafka_is_separate_and_keeps_its_data_across_a_kill(
    private_kafka: PrivateKafka, kafka_bootstrap: str
) -> None:
    assert private_kafka.bootstrap != kafka_bootstrap
    topic = f"test.private.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(_config(private_kafka.bootstrap))
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(timeout=30)
    producer = Producer(_config(private_kafka.bootstrap, acks="all"))
    producer.produce(topic, b"kept across a crash")
    assert producer.flush(30) == 0

    private_kafka.kill()
    with pytest.raises(KafkaException):
        _brokers(private_kafka.bootstrap)
    assert _brokers(kafka_bootstrap) == 1  # the shared broker never noticed
    private_kafka.start()
    assert _first_message(private_kafka.bootstrap, topic) == b"kept across a crash"


def test_private_postgres_keeps_committed_rows_and_grants_across_a_kill(
    private_postgres: PrivatePostgres,
) -> None:
    table = f"survivor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(private_postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (v text)")
        conn.execute(f"INSERT INTO {table} VALUES ('committed before the crash')")
    private_postgres.kill()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(private_postgres.dsn, connect_timeout=2).close()
    private_postgres.start()
    with psycopg.connect(private_postgres.read_dsn) as conn:  # the reader's grants survive
        rows = conn.execute(f"SELECT v FROM {table}").fetchall()
    assert rows == [("committed before the crash",)]
