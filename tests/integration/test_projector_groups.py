"""Exactly-once effect whatever projector processes an operator starts.

Three mistakes an operator makes by accident, on the real broker and database:

- two projectors on one schema in two consumer groups (one started with
  ``--group``, one with the default): the second refuses at start, naming the
  owner; and even with ownership bypassed (two bare loops of two groups) the
  fence commits no batch that does not begin exactly at the stored offset, so
  the projection holds exactly the rows produced;
- two projectors of *different* schemas started with the default group: the
  default is derived from topic and schema, so they never share a group and
  both drain;
- a take-over: the old owner stops at its next batch instead of committing on.

And the one legitimate gap: offsets deleted from the topic before they were
projected are skipped once, with one ERROR line and a dead letter naming them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql
from test_projector_support import (
    assert_same_tables,
    checksums,
    drop_schema,
    migrate,
    produce,
    realistic_events,
    reference_projection,
    running_projector,
    settings_for,
    stored_total,
    wait_projected,
)
from typer.testing import CliRunner

from factflow_lineage.config import Settings
from factflow_lineage.consumer import Projection, ProjectorConfig, RebuildOptions, rebuild
from factflow_lineage.consumer._cli import projector_app
from factflow_lineage.consumer._decoder import default_decode
from factflow_lineage.consumer._loop import ProjectorLoop
from factflow_lineage.consumer._service import consumer_config
from factflow_lineage.consumer._writer import BatchWriter
from factflow_lineage.db import connect


class Projector:
    """``factflow projector run ARGS`` as a child process (no ``--group`` unless given)."""

    def __init__(self, settings: Settings, log_dir: Path, name: str, *args: str) -> None:
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
            [sys.executable, "-m", "factflow_lineage", "projector", "run", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while "assigned partitions [" not in self.log():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def ensure_stopped(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if not self._log.closed:
            self._log.close()


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line]


def _owner(dsn: str, schema: str) -> tuple[str, str] | None:
    with connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT group_id, topic FROM {}").format(
                sql.Identifier(schema, "projection_owner")
            )
        ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def test_a_projector_of_another_group_refuses_at_start_naming_the_owner(
    settings: Settings, group_id: str, tmp_path: Path
) -> None:
    pg, topic = settings.postgres, settings.kafka.topic
    messages = produce(settings.kafka.bootstrap, topic, realistic_events(2_000, seed=3))
    first = Projector(settings, tmp_path, "first", "--group", group_id)
    second: Projector | None = None
    try:
        wait_projected(pg.dsn, pg.schema, topic, messages)
        # The accident: the same schema, the default group.
        second = Projector(settings, tmp_path, "second")
        code = second.wait(45)
        assert code == 1, second.log()
        errors = _error_lines(second.log())
        assert len(errors) == 1, second.log()
        assert group_id in errors[0] and "--take-over" in errors[0], errors[0]
        assert "Traceback" not in second.log()
        assert first.proc.poll() is None, first.log()
        assert first.terminate() == 0, first.log()
    finally:
        first.ensure_stopped()
        if second is not None:
            second.ensure_stopped()
    assert _owner(pg.dsn, pg.schema) == (group_id, topic)


def test_an_empty_group_is_refused_with_one_line(settings: Settings, tmp_path: Path) -> None:
    proc = Projector(settings, tmp_path, "empty", "--group", "")
    try:
        assert proc.wait(30) == 2, proc.log()
        assert len(_error_lines(proc.log())) == 1, proc.log()
        assert "Traceback" not in proc.log()
    finally:
        proc.ensure_stopped()


@contextmanager
def bare_loop(settings: Settings, group: str, batch_max: int) -> Iterator[ProjectorLoop]:
    """A projector loop of its own group, without the service's claim of the schema.

    What an old release (or a script using the loop) does: nothing but the
    fence stands between it and another group's projector.
    """
    kafka, pg = settings.kafka, settings.postgres
    writer = BatchWriter(
        schema=pg.schema,
        topic=kafka.topic,
        projection=Projection(pg.schema),
        decode=default_decode(),
    )
    config = ProjectorConfig(group_id=group, batch_max=batch_max)
    consumer = Consumer(consumer_config(kafka.bootstrap, config))
    loop = ProjectorLoop(
        consumer=consumer,
        topic=kafka.topic,
        writer=writer,
        connect=lambda: connect(pg.dsn, schema=pg.schema, autocommit=True),
        options=config.loop_options(),
    )
    consumer.subscribe(
        [kafka.topic], on_assign=loop.on_assign, on_revoke=loop.on_revoke, on_lost=loop.on_lost
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            loop.run(stop)
        except BaseException as e:  # reported to the test below
            errors.append(e)

    thread = threading.Thread(target=target, name=f"loop-{group}")
    thread.start()
    try:
        yield loop
    finally:
        stop.set()
        thread.join(60)
        consumer.close()
    assert not thread.is_alive(), "loop did not stop"
    if errors:
        raise errors[0]


def test_two_groups_on_one_schema_project_exactly_what_was_produced(
    settings: Settings, group_id: str
) -> None:
    pg, topic = settings.postgres, settings.kafka.topic
    events = realistic_events(20_000, seed=11)
    migrate(pg.dsn, pg.schema)
    produced = 0
    chunks = [events[i : i + 500] for i in range(0, len(events), 500)]
    with (
        bare_loop(settings, f"{group_id}-a", batch_max=700) as a,
        bare_loop(settings, f"{group_id}-b", batch_max=300) as b,
    ):
        # Fed while both run, so that their batches interleave all along.
        for chunk in chunks:
            produced += produce(settings.kafka.bootstrap, topic, chunk)
            time.sleep(0.05)
        wait_projected(pg.dsn, pg.schema, topic, produced, timeout=120)
        time.sleep(0.5)  # both loops go on meeting the end: nothing more commits
    assert a.stats.conflicts + b.stats.conflicts > 0, "the two groups never raced"
    assert stored_total(pg.dsn, pg.schema, topic) == produced

    reference = f"{pg.schema}_ref"
    try:
        reference_projection(settings, reference, produced, f"{group_id}-ref")
        got, want = checksums(pg.dsn, pg.schema), checksums(pg.dsn, reference)
        assert got["lineage"][0] == want["lineage"][0], "rows lost or doubled"
        assert_same_tables(pg.dsn, pg.schema, reference)
    finally:
        drop_schema(pg.dsn, reference)


def test_two_schemas_started_with_the_default_group_both_drain(
    settings: Settings, tmp_path: Path
) -> None:
    topic = settings.kafka.topic
    other = settings_for(settings, schema=f"{settings.postgres.schema}_b")
    messages = produce(settings.kafka.bootstrap, topic, realistic_events(6_000, seed=5))
    first = Projector(settings, tmp_path, "first")
    second = Projector(other, tmp_path, "second")
    try:
        for s in (settings, other):
            wait_projected(s.postgres.dsn, s.postgres.schema, topic, messages, timeout=45)
        for proc in (first, second):
            assert proc.terminate() == 0, proc.log()
        assert_same_tables(settings.postgres.dsn, settings.postgres.schema, other.postgres.schema)
        owners = {_owner(s.postgres.dsn, s.postgres.schema) for s in (settings, other)}
        assert len(owners) == 2, owners  # two groups, one per schema
    finally:
        first.ensure_stopped()
        second.ensure_stopped()
        drop_schema(other.postgres.dsn, other.postgres.schema)


def test_take_over_records_the_new_owner_and_stops_the_old_one(
    settings: Settings, group_id: str, tmp_path: Path
) -> None:
    pg, topic = settings.postgres, settings.kafka.topic
    events = realistic_events(8_000, seed=8)
    messages = produce(settings.kafka.bootstrap, topic, events[:4_000])
    old = Projector(settings, tmp_path, "old", "--group", f"{group_id}-old")
    new: Projector | None = None
    try:
        wait_projected(pg.dsn, pg.schema, topic, messages)
        new = Projector(settings, tmp_path, "new", "--group", f"{group_id}-new", "--take-over")
        new.wait_ready()
        assert _owner(pg.dsn, pg.schema) == (f"{group_id}-new", topic)
        messages += produce(settings.kafka.bootstrap, topic, events[4_000:])
        # The old owner meets the new owner at its next batch and stops, one line.
        assert old.wait(45) == 1, old.log()
        errors = _error_lines(old.log())
        assert len(errors) == 1 and f"{group_id}-new" in errors[0], old.log()
        wait_projected(pg.dsn, pg.schema, topic, messages)
        assert new.terminate() == 0, new.log()
    finally:
        old.ensure_stopped()
        if new is not None:
            new.ensure_stopped()
    reference = f"{pg.schema}_ref"
    try:
        reference_projection(settings, reference, messages, f"{group_id}-ref")
        assert_same_tables(pg.dsn, pg.schema, reference)
    finally:
        drop_schema(pg.dsn, reference)


def test_offsets_deleted_before_they_were_projected_are_skipped_once_and_named(
    settings: Settings, group_id: str, tmp_path: Path
) -> None:
    pg, topic = settings.postgres, settings.kafka.topic
    events = realistic_events(3_000, seed=9)
    messages = produce(settings.kafka.bootstrap, topic, events)
    migrate(pg.dsn, pg.schema)
    # The projection stored partition 0 at offset 0, then retention deleted
    # the partition's first 50 records before they were projected.
    with connect(pg.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (topic, partition, next_offset) VALUES (%s, 0, 0)").format(
                sql.Identifier(pg.schema, "consumer_offsets")
            ),
            (topic,),
        )
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 0, 50)]).values():
        future.result(timeout=20)
    proc = Projector(settings, tmp_path, "gap", "--group", group_id)
    try:
        wait_projected(pg.dsn, pg.schema, topic, messages, timeout=60)
        time.sleep(0.5)
        assert proc.terminate() == 0, proc.log()
    finally:
        proc.ensure_stopped()
    lost = [line for line in proc.log().splitlines() if " ERROR " in line]
    assert len(lost) == 1, proc.log()
    assert "partition 0" in lost[0] and "0..49" in lost[0], lost[0]
    with connect(pg.dsn, autocommit=True) as conn:
        letters = conn.execute(
            sql.SQL('SELECT partition, "offset", error FROM {}').format(
                sql.Identifier(pg.schema, "dead_letters")
            )
        ).fetchall()
    assert [(p, o) for p, o, _ in letters] == [(0, 0)], letters
    assert "0..49" in letters[0][2]


def test_status_names_the_owner_and_a_rebuild_keeps_it_for_the_live_projector(
    settings: Settings, group_id: str
) -> None:
    pg, topic = settings.postgres, settings.kafka.topic
    events = realistic_events(6_000, seed=12)
    messages = produce(settings.kafka.bootstrap, topic, events[:3_000])
    env = {
        "FACTFLOW_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "FACTFLOW_TOPIC": topic,
        "FACTFLOW_PG_SCHEMA": pg.schema,
    }
    with running_projector(settings, group_id):
        wait_projected(pg.dsn, pg.schema, topic, messages)
        result = CliRunner().invoke(projector_app, ["status", "--output", "json"], env=env)
        assert result.exit_code == 0, result.output
        status = json.loads(result.output)
        assert status["owner"]["group_id"] == group_id and status["total_lag"] == 0
        report = rebuild(settings, RebuildOptions(drop_old=True, catch_up_lag=0))
        assert report.dropped_old
        # The swapped-in schema carries the live group: its projector goes on there.
        assert _owner(pg.dsn, pg.schema) == (group_id, topic)
        messages += produce(settings.kafka.bootstrap, topic, events[3_000:])
        wait_projected(pg.dsn, pg.schema, topic, messages)
