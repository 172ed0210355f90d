"""scripts/stack, through its command line, against the real local stack.

Self-contained on purpose: the stack script must work before anything else does,
so these tests use no project fixture, only the script and the real services.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from factflow_lineage.config import DEFAULT_BOOTSTRAP, DEFAULT_PG_DSN, DEFAULT_PG_READ_DSN

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
BOOTSTRAP = os.environ.get("FACTFLOW_KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP
PG_DSN = os.environ.get("FACTFLOW_PG_DSN") or DEFAULT_PG_DSN
PG_READ_DSN = os.environ.get("FACTFLOW_PG_READ_DSN") or DEFAULT_PG_READ_DSN
KAFKA_LOGGER = logging.getLogger("tests.stack.kafka")


def stack(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the script as users do: its own shebang, our environment plus `env`."""
    return subprocess.run(
        [str(STACK), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def parse_status(stdout: str) -> dict[str, tuple[str, str]]:
    """{"kafka": ("running", "12345"), ...} from `scripts/stack status`."""
    services = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "pid":
            services[fields[0]] = (fields[1], fields[3])
    return services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def status() -> dict[str, tuple[str, str]]:
    """The stack's state before the tests touch it; skips (fails in CI) when it is down."""
    done = stack("status")
    if done.returncode != 0:
        message = f"the local stack is not up (`scripts/stack up`):\n{done.stdout}{done.stderr}"
        if IN_CI:
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return parse_status(done.stdout)


def test_status_exits_zero_and_names_both_services(status: dict[str, tuple[str, str]]) -> None:
    assert set(status) == {"kafka", "postgres"}
    for name, (state, pid) in status.items():
        assert state in {"running", "external"}, name
        assert pid.isdigit() == (state == "running"), (name, pid)


def test_up_twice_changes_nothing_and_says_already_running(
    status: dict[str, tuple[str, str]],
) -> None:
    for _ in range(2):
        done = stack("up")
        assert done.returncode == 0, done.stderr
        assert "started" not in done.stdout
        for name, (state, pid) in status.items():
            expected = f"{name}: already running (pid {pid}," if state == "running" else "external"
            line = next(li for li in done.stdout.splitlines() if li.startswith(f"{name}:"))
            assert expected in line, done.stdout
    after = stack("status")
    assert after.returncode == 0
    assert parse_status(after.stdout) == status  # same processes: nothing was restarted


def test_env_prints_exports_that_a_shell_can_eval() -> None:
    tricky = {
        "FACTFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
        "FACTFLOW_PG_DSN": "postgresql://w:it's%20$HOME@127.0.0.1:15432/factflow",
        "FACTFLOW_PG_READ_DSN": "postgresql://r:x`y`@127.0.0.1:15432/factflow",
    }
    script = f'eval "$("{STACK}" env)" && printf "%s\\n" "$FACTFLOW_KAFKA_BOOTSTRAP" '
    script += '"$FACTFLOW_PG_DSN" "$FACTFLOW_PG_READ_DSN"'
    done = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, **tricky},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == list(tricky.values())


def test_env_defaults_are_the_settings_defaults() -> None:
    unset = {k: "" for k in ("FACTFLOW_KAFKA_BOOTSTRAP", "FACTFLOW_PG_DSN", "FACTFLOW_PG_READ_DSN")}
    done = stack("env", env=unset)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"export FACTFLOW_KAFKA_BOOTSTRAP={DEFAULT_BOOTSTRAP}",
        f"export FACTFLOW_PG_DSN={DEFAULT_PG_DSN}",
        f"export FACTFLOW_PG_READ_DSN={DEFAULT_PG_READ_DSN}",
    ]


def test_a_stack_that_is_not_there_is_reported_in_one_line_each(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "FACTFLOW_STACK_DIR": str(tmp_path / "stack"),
        "FACTFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "FACTFLOW_PG_DSN": f"postgresql://a:a@127.0.0.1:{port}/db",
        "FACTFLOW_PG_READ_DSN": f"postgresql://b:b@127.0.0.1:{port}/db",
    }
    status = stack("status", env=env)
    assert status.returncode == 1
    assert {state for state, _ in parse_status(status.stdout).values()} == {"stopped"}
    stopped = stack("stop", "kafka", env=env)
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "kafka: not running")
    killed = stack("kill", "postgres", env=env)
    assert killed.returncode == 1
    assert killed.stderr.startswith("stack: error: postgres: not running")
    assert "Traceback" not in status.stderr + stopped.stderr + killed.stderr
    assert len(killed.stderr.strip().splitlines()) == 1


# -- outages: these stop the shared services for a few seconds --------------------


def kafka_config(**extra: str) -> dict[str, Any]:
    # Without a logger librdkafka writes its own lines to stderr.
    return {"bootstrap.servers": BOOTSTRAP, "logger": KAFKA_LOGGER, **extra}


def _kafka_topics(timeout: float) -> set[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_config())
    metadata = admin.list_topics(timeout=timeout)
    assert metadata.brokers, "a Metadata answer without brokers"
    return set(metadata.topics)


@pytest.fixture
def kafka_topic() -> Iterator[str]:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"test.stack.{uuid.uuid4().hex[:12]}"
    admin = AdminClient(kafka_config())
    admin.create_topics([NewTopic(name, num_partitions=1)])[name].result(timeout=30)
    yield name
    admin = AdminClient(kafka_config())
    admin.delete_topics([name])[name].result(timeout=30)


@pytest.mark.slow
def test_kafka_stop_then_start_answers_metadata_and_keeps_its_data(
    status: dict[str, tuple[str, str]], kafka_topic: str
) -> None:
    from confluent_kafka import Consumer, KafkaException, Producer

    if status["kafka"][0] != "running":
        pytest.skip("Kafka is external: scripts/stack does not stop it")
    producer = Producer(kafka_config())
    producer.produce(kafka_topic, key=b"k", value=b"kept across a restart")
    assert producer.flush(30) == 0

    try:
        stopped = stack("stop", "kafka")
        assert stopped.returncode == 0, stopped.stderr
        assert parse_status(stack("status").stdout)["kafka"][0] == "stopped"
        with pytest.raises(KafkaException):
            _kafka_topics(timeout=2)
    finally:
        started = stack("start", "kafka")
    assert started.returncode == 0, started.stderr
    assert "kafka: ready" in started.stdout

    assert kafka_topic in _kafka_topics(timeout=10)
    consumer = Consumer(
        kafka_config(
            **{"group.id": f"test-stack-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest"}
        )
    )
    try:
        consumer.subscribe([kafka_topic])
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error():
                message = None
    finally:
        consumer.close()
    assert message is not None, "the message produced before the restart is gone"
    assert message.value() == b"kept across a restart"


@pytest.mark.slow
def test_postgres_kill_then_start_recovers_committed_rows(
    status: dict[str, tuple[str, str]],
) -> None:
    if status["postgres"][0] != "running":
        pytest.skip("PostgreSQL is external: scripts/stack does not kill it")
    schema = sql.Identifier(f"test_stack_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(sql.SQL("CREATE TABLE {}.t (v text)").format(schema))
        conn.execute(
            sql.SQL("INSERT INTO {}.t VALUES ('committed before the crash')").format(schema)
        )
    try:
        try:
            killed = stack("kill", "postgres")
            assert killed.returncode == 0, killed.stderr
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(PG_DSN, connect_timeout=2).close()
        finally:
            started = stack("start", "postgres")
        assert started.returncode == 0, started.stderr
        with psycopg.connect(PG_READ_DSN) as conn:  # the reader's grants survive too
            rows = conn.execute(sql.SQL("SELECT v FROM {}.t").format(schema)).fetchall()
        assert rows == [("committed before the crash",)]
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
