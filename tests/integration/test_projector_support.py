"""Helpers of the projector's integration tests (no tests here).

Events come from helper generators (``support.events``), go through the real
codec and the real broker, keyed like the producer keys them (the chain's root
id; execution events by execution id), and are projected by the real projector,
in-process or as a ``python -m factflow_lineage.consumer`` subprocess.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from psycopg import sql

from factflow_lineage.config import KafkaSettings, PostgresSettings, Settings
from factflow_lineage.consumer import Projector, ProjectorConfig, load_offsets, table_checksums
from factflow_lineage.db import connect
from factflow_lineage.migrations import apply_migrations, projection_migrations
from factflow_lineage.schemas import encode
from support.events import RunShape, realistic_run

Event = Mapping[str, Any]


def realistic_events(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """The first ``count`` events (by time) of realistic pipeline runs.

    A prefix of the stream, as a projector sees it at some moment: most chains
    complete, the latest ones still pending.
    """
    roots = max(2, count // 600)
    while True:
        executions = max(1, roots // 25)
        shape = RunShape(executions=executions, roots=max(1, roots // executions))
        events = realistic_run(random.Random(seed), shape)
        if len(events) >= count:
            return events[:count]
        roots *= 2


def message_key(event: Event, roots: dict[bytes, bytes]) -> bytes:
    """The producer's key: the chain's root id (execution events: the execution id)."""
    payload = event["payload"]
    if event["event_type"].startswith("EXECUTION_"):
        return bytes(payload["execution_id"])
    if event["event_type"] == "INVOCATION_STARTED":
        roots[payload["lineage_id"]] = payload["root_id"]
        return bytes(payload["root_id"])
    return bytes(roots.get(payload["lineage_id"], payload["lineage_id"]))


# lineage id -> root id of every start produced so far, per topic: a terminal
# event carries no root id, and a later produce() call may hold it.
_ROOTS: dict[str, dict[bytes, bytes]] = {}
# One producer per broker for the whole session: an idempotent producer's
# first message waits for a producer id, half a second each time.
_PRODUCERS: dict[str, Producer] = {}


def _producer(bootstrap: str) -> Producer:
    if bootstrap not in _PRODUCERS:
        _PRODUCERS[bootstrap] = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                "batch.num.messages": 10_000,
                "acks": "all",
                "enable.idempotence": True,
            }
        )
    return _PRODUCERS[bootstrap]


def produce(
    bootstrap: str,
    topic: str,
    events: Iterable[Event],
    *,
    poison: Mapping[int, bytes] | None = None,
) -> int:
    """Write ``events`` (and raw ``poison`` messages before event number N) to ``topic``.

    Returns the number of messages written.
    """
    producer = _producer(bootstrap)
    poison = dict(poison or {})
    roots = _ROOTS.setdefault(topic, {})
    written = 0
    failures: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for i, event in enumerate(events):
        if i in poison:
            producer.produce(topic, poison.pop(i), key=b"poison", on_delivery=report)
            written += 1
        while True:
            try:
                producer.produce(
                    topic, encode(event), key=message_key(event, roots), on_delivery=report
                )
                break
            except BufferError:
                producer.poll(0.05)
        written += 1
        if written % 5000 == 0:
            producer.poll(0)
    for raw in poison.values():
        producer.produce(topic, raw, key=b"poison", on_delivery=report)
        written += 1
    remaining = producer.flush(60)
    assert remaining == 0 and not failures, f"produce failed: {remaining} left, {failures[:3]}"
    return written


def settings_for(settings: Settings, *, schema: str | None = None) -> Settings:
    """``settings`` pointed at another schema (same topic)."""
    if schema is None:
        return settings
    return replace(settings, postgres=replace(settings.postgres, schema=schema))


def migrate(dsn: str, schema: str) -> None:
    with connect(dsn, autocommit=True) as conn:
        apply_migrations(conn, schema, projection_migrations())


def stored_total(dsn: str, schema: str, topic: str) -> int:
    """Sum of the stored next offsets: messages projected (offsets have no gaps here)."""
    with connect(dsn, autocommit=True) as conn:
        try:
            return sum(load_offsets(conn, schema, topic).values())
        except psycopg.errors.UndefinedTable:
            return 0  # the projector has not migrated its schema yet


def wait_projected(
    dsn: str, schema: str, topic: str, messages: int, timeout: float = 120.0
) -> float:
    """Wait until ``messages`` are projected into ``schema``; returns the seconds waited."""
    started = time.monotonic()
    seen = -1
    while time.monotonic() - started < timeout:
        try:
            seen = stored_total(dsn, schema, topic)
        except (psycopg.OperationalError, OSError):
            seen = -1
        if seen >= messages:
            assert seen == messages, f"projected {seen} > {messages} messages"
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"only {seen} of {messages} messages projected after {timeout}s")


def checksums(dsn: str, schema: str) -> dict[str, tuple[int, str]]:
    """Row count and digest of every table of ``schema`` (processing metadata excluded)."""
    with connect(dsn, autocommit=True) as conn:
        return {t: (c.rows, c.digest) for t, c in table_checksums(conn, schema).items()}


def drop_schema(dsn: str, schema: str) -> None:
    with connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def running_projector(settings: Settings, group: str, **config: Any) -> Iterator[Projector]:
    """A projector running in a background thread for the duration of the block."""
    migrate(settings.postgres.dsn, settings.postgres.schema)
    projector = Projector(settings, ProjectorConfig(group_id=group, **config))
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            projector.run(stop)
        except BaseException as e:  # reported to the test below
            errors.append(e)

    thread = threading.Thread(target=target, name=f"projector-{group}")
    thread.start()
    try:
        yield projector
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "projector did not stop"
    if errors:
        raise errors[0]


def reference_projection(settings: Settings, schema: str, messages: int, group: str) -> None:
    """Project the whole topic, uninterrupted, into ``schema``."""
    ref = settings_for(settings, schema=schema)
    with running_projector(ref, group):
        wait_projected(settings.postgres.dsn, schema, settings.kafka.topic, messages)


class ProjectorProcess:
    """``python -m factflow_lineage.consumer`` as a child process with its own log file."""

    def __init__(
        self, settings: Settings, group: str, log_dir: Path, name: str, *args: str
    ) -> None:
        self.log_path = log_dir / f"{name}.log"
        env = dict(os.environ)
        env.update(
            {
                "FACTFLOW_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
                "FACTFLOW_TOPIC": settings.kafka.topic,
                "FACTFLOW_PG_DSN": settings.postgres.dsn,
                "FACTFLOW_PG_READ_DSN": settings.postgres.read_dsn,
                "FACTFLOW_PG_SCHEMA": settings.postgres.schema,
                "PYTHONUNBUFFERED": "1",
            }
        )
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "factflow_lineage.consumer", "--group", group, *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the group assigned partitions (signals are handled from then on)."""
        deadline = time.monotonic() + timeout
        while "assigned partitions" not in self.log():
            assert self.alive(), self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no finally, no rollback, no goodbye to the group."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ensure_stopped(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(30)
        if not self._log.closed:
            self._log.close()


def assert_same_tables(
    dsn: str, schema: str, reference: str, *, skip: Sequence[str] = ()
) -> dict[str, tuple[int, str]]:
    """Every table of ``schema`` has exactly the content of the same table in ``reference``."""
    got = {t: v for t, v in checksums(dsn, schema).items() if t not in skip}
    want = {t: v for t, v in checksums(dsn, reference).items() if t not in skip}
    assert got == want
    assert got.get("lineage", (0, ""))[0] > 0, "nothing was projected"
    return got


def new_settings(
    settings: Settings, *, bootstrap: str | None = None, dsn: str | None = None
) -> Settings:
    """``settings`` pointed at another broker or database (private fault-test instances)."""
    return Settings(
        kafka=KafkaSettings(
            bootstrap=bootstrap or settings.kafka.bootstrap,
            topic=settings.kafka.topic,
            partitions=settings.kafka.partitions,
        ),
        postgres=PostgresSettings(
            dsn=dsn or settings.postgres.dsn,
            read_dsn=settings.postgres.read_dsn,
            schema=settings.postgres.schema,
        ),
    )
