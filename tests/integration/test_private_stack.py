"""The private instances that outage tests rely on really stop and come back."""

from __future__ import annotations

import psycopg
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from support.private_stack import PrivateKafka, PrivatePostgres

pytestmark = pytest.mark.slow


def _brokers(bootstrap: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _QUIET})
    return len(admin.list_topics(timeout=5).brokers)


class _Quiet:
    def log(self, *args: object, **kwargs: object) -> None:
        pass


_QUIET = _Quiet()


def test_private_kafka_is_separate_and_survives_a_kill(
    private_kafka: PrivateKafka, kafka_bootstrap: str
) -> None:
    assert private_kafka.bootstrap != kafka_bootstrap
    assert _brokers(private_kafka.bootstrap) == 1
    private_kafka.kill()
    with pytest.raises(KafkaException):
        _brokers(private_kafka.bootstrap)
    private_kafka.start()
    assert _brokers(private_kafka.bootstrap) == 1
    assert _brokers(kafka_bootstrap) == 1  # the shared broker never noticed


def test_private_postgres_keeps_committed_rows_across_a_kill(
    private_postgres: PrivatePostgres,
) -> None:
    with psycopg.connect(private_postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS survivor (v int)")
        conn.execute("INSERT INTO survivor VALUES (42)")
    private_postgres.kill()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(private_postgres.dsn, connect_timeout=2).close()
    private_postgres.start()
    with psycopg.connect(private_postgres.read_dsn) as conn:
        assert (42,) in conn.execute("SELECT v FROM survivor").fetchall()
