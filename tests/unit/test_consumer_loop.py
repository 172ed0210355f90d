"""The consume loop against a fake consumer, a fake database and a fake writer.

What is checked: positions come from the stored offsets (on assignment, after an
outage, after a conflict); stale and foreign messages never reach the writer;
no batch reaches the writer unless it begins at the stored offset (or, with
none stored, at the log start) and is contiguous; offsets the log lost are
skipped once, with one ERROR line;
a database outage pauses, waits, logs once each way, and resumes exactly where
the database says; Kafka gets advisory commits after each batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from factflow_lineage.consumer import _loop
from factflow_lineage.consumer._decoder import DecodedBatch
from factflow_lineage.consumer._faults import Backoff
from factflow_lineage.consumer._loop import LoopOptions, ProjectorLoop
from factflow_lineage.consumer._writer import WriteResult
from support.messages import FakeMessage as Msg

TOPIC = "lineage"


@dataclass
class Database:
    """Stored offsets, and a switch that makes every access fail."""

    stored: dict[int, int] = field(default_factory=dict)
    down: bool = False
    connects: int = 0

    def check(self) -> None:
        if self.down:
            raise psycopg.OperationalError("connection refused")


class FakeConn:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeWriter:
    """Applies messages to ``applied`` and moves the stored offsets, like the real one."""

    schema = "s"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.applied: list[tuple[int, int]] = []
        self.conflict_once: set[int] = set()
        self.on_write: Callable[[], None] = lambda: None
        # (partition, first offset of the batch, stored offset when it was written)
        self.starts: list[tuple[int, int, int | None]] = []
        self.skipped: list[tuple[int, int, int]] = []

    def planning_worker(self, runtime: object = None) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # decodes in the loop's process

    def decode(self, messages: Sequence[Msg]) -> Any:
        ranges: dict[int, tuple[int, int]] = {}
        for m in messages:
            ranges[m.p] = (ranges.get(m.p, (m.o, m.o))[0], m.o)
        return DecodedBatch(ranges=ranges)

    def write_decoded(
        self, conn: Any, messages: Sequence[Msg], batch: Any, expected: Mapping[int, int | None]
    ) -> WriteResult:
        assert threading.current_thread() is not threading.main_thread()
        self.on_write()
        self.db.check()
        ranges: dict[int, tuple[int, int]] = {}
        for m in messages:
            first, _ = ranges.get(m.p, (m.o, m.o))
            ranges[m.p] = (first, m.o)
        self.starts.extend((p, first, self.db.stored.get(p)) for p, (first, _) in ranges.items())
        # The real fence: an update must begin at the stored offset, an insert
        # finds no row.
        conflicts = frozenset(
            p
            for p, (first, _) in ranges.items()
            if (p in self.db.stored if expected.get(p) is None else self.db.stored.get(p) != first)
            or p in self.conflict_once
        )
        if conflicts:
            self.conflict_once -= conflicts
            return WriteResult(conflicts=conflicts)
        for m in messages:
            self.applied.append((m.p, m.o))
        committed = {p: last + 1 for p, (_, last) in ranges.items()}
        self.db.stored.update(committed)
        return WriteResult(committed=committed, events=len(messages), transactions=1)

    def skip_lost(self, conn: Any, partition: int, stored: int, to: int) -> bool:
        self.db.check()
        if self.db.stored.get(partition) != stored:
            return False
        self.db.stored[partition] = to
        self.skipped.append((partition, stored, to))
        return True


class FakeConsumer:
    """Partitions of one topic with messages 0..n-1; assignment, pause, seek like librdkafka."""

    def __init__(self, sizes: Mapping[int, int]) -> None:
        self.sizes = dict(sizes)
        self.fetch: dict[int, int] = {}  # assigned partition -> next offset to deliver
        self.paused: set[int] = set()
        self.commits: list[dict[int, int]] = []
        self.pending: list[tuple[str, list[int]]] = []
        self.loop: ProjectorLoop | None = None
        self.stop_when: Callable[[], bool] = lambda: False
        self.stop = threading.Event()
        self.calls = 0
        self.low: dict[int, int] = {}  # partition -> log start (default 0)

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return self.low.get(tp.partition, 0), self.sizes[tp.partition]

    def _start(self, partition: int, offset: int) -> int:
        # OFFSET_BEGINNING, or an offset the log no longer holds
        # (auto.offset.reset=earliest): the log start.
        low = self.low.get(partition, 0)
        return low if offset in (OFFSET_BEGINNING, -1001) or offset < low else offset

    def _rebalance(self) -> None:
        assert self.loop is not None
        while self.pending:
            kind, parts = self.pending.pop(0)
            tps = [TopicPartition(TOPIC, p) for p in parts]
            getattr(self.loop, f"on_{kind}")(self, tps)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Msg]:
        self.calls += 1
        if self.calls > 10_000:
            raise AssertionError("the loop spins without progress")
        self._rebalance()
        if self.stop_when():
            self.stop.set()
        out: list[Msg] = []
        for p in sorted(self.fetch):
            if p in self.paused:
                continue
            while self.fetch[p] < self.sizes[p] and len(out) < num_messages:
                out.append(Msg(p, self.fetch[p]))
                self.fetch[p] += 1
        return out

    def poll(self, timeout: float = -1) -> Msg | None:
        got = self.consume(1, timeout)
        return got[0] if got else None

    def incremental_assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.fetch[tp.partition] = self._start(tp.partition, tp.offset)

    def incremental_unassign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.fetch.pop(tp.partition, None)
            self.paused.discard(tp.partition)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in self.fetch]

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused.update(tp.partition for tp in tps if tp.partition in self.fetch)

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused.difference_update(tp.partition for tp in tps)

    def seek(self, tp: TopicPartition) -> None:
        if tp.partition not in self.fetch:
            raise KafkaException("Local: Erroneous state")
        self.fetch[tp.partition] = self._start(tp.partition, tp.offset)

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})

    reachable = True  # what a metadata request finds

    def list_topics(self, topic: str, timeout: float) -> None:
        if not self.reachable:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> Database:
    database = Database()

    def load(
        conn: FakeConn, schema: str, topic: str, partitions: Iterable[int] | None = None
    ) -> dict[int, int]:
        assert not conn.closed
        database.check()
        wanted = None if partitions is None else set(partitions)
        return {p: o for p, o in database.stored.items() if wanted is None or p in wanted}

    monkeypatch.setattr(_loop, "load_offsets", load)
    return database


def make_loop(
    db: Database, sizes: Mapping[int, int]
) -> tuple[ProjectorLoop, FakeConsumer, FakeWriter]:
    consumer = FakeConsumer(sizes)
    writer = FakeWriter(db)

    def connect() -> FakeConn:
        db.connects += 1
        db.check()
        return FakeConn(db)

    loop = ProjectorLoop(
        consumer=consumer,  # type: ignore[arg-type]
        topic=TOPIC,
        writer=writer,  # type: ignore[arg-type]
        connect=connect,  # type: ignore[arg-type]
        options=LoopOptions(batch_max=4, poll_timeout=0.0, backoff_initial=0.001, backoff_max=0.01),
    )
    consumer.loop = loop
    return loop, consumer, writer


def drained(consumer: FakeConsumer, db: Database) -> Callable[[], bool]:
    return lambda: all(db.stored.get(p) == n for p, n in consumer.sizes.items())


def test_assignment_starts_at_the_stored_offsets(db: Database) -> None:
    db.stored = {0: 3}
    loop, consumer, writer = make_loop(db, {0: 6, 1: 2})
    consumer.pending.append(("assign", [0, 1]))
    consumer.stop_when = drained(consumer, db)
    loop.run(consumer.stop)
    assert sorted(writer.applied) == [(0, 3), (0, 4), (0, 5), (1, 0), (1, 1)]
    assert db.stored == {0: 6, 1: 2}
    assert consumer.commits and consumer.commits[-1]  # advisory commits follow the batches
    assert loop.stats.events == 5


def test_stale_and_foreign_messages_never_reach_the_writer(db: Database) -> None:
    db.stored = {0: 2}
    loop, consumer, _ = make_loop(db, {0: 4})
    loop._conn = FakeConn(db)  # type: ignore[assignment]
    consumer.pending.append(("assign", [0]))
    consumer.consume(0)  # serve the assignment
    accepted = loop._accept([Msg(0, 1), Msg(0, 2), Msg(1, 0), Msg(0, 3, t="other")])  # type: ignore[list-item]
    assert [(m.partition(), m.offset()) for m in accepted] == [(0, 2)]


def test_revoked_partitions_are_dropped(db: Database) -> None:
    loop, consumer, _ = make_loop(db, {0: 3, 1: 3})
    loop._conn = FakeConn(db)  # type: ignore[assignment]
    consumer.pending.append(("assign", [0, 1]))
    consumer.consume(0)
    consumer.pending.append(("revoke", [1]))
    consumer.consume(0)
    accepted = loop._accept([Msg(0, 0), Msg(1, 0)])  # type: ignore[list-item]
    assert [(m.partition(), m.offset()) for m in accepted] == [(0, 0)]
    assert 1 not in consumer.fetch


def test_database_outage_pauses_waits_logs_once_and_resumes_at_the_stored_offsets(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="factflow_lineage.consumer")
    loop, consumer, writer = make_loop(db, {0: 10, 1: 10})
    consumer.pending.append(("assign", [0, 1]))
    writes = [0]
    outage_polls = [0]

    def on_write() -> None:
        writes[0] += 1
        if writes[0] == 2:
            db.down = True

    def stop_when() -> bool:
        if db.down:
            outage_polls[0] += 1
            if outage_polls[0] > 20:  # several failed reconnects, then the database is back
                db.down = False
        return drained(consumer, db)()

    writer.on_write = on_write
    consumer.stop_when = stop_when
    loop.run(consumer.stop)

    # Nothing lost, nothing twice: each offset applied exactly once.
    assert sorted(writer.applied) == [(p, o) for p in (0, 1) for o in range(10)]
    assert db.connects >= 3  # first connect, then retries until it answered
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in messages if m.startswith("PostgreSQL unavailable")]) == 1
    assert len([m for m in messages if m.startswith("PostgreSQL available again")]) == 1
    assert not consumer.paused


def test_assignment_while_the_database_is_down_waits_paused(db: Database) -> None:
    db.stored = {0: 5}
    loop, consumer, writer = make_loop(db, {0: 8})
    polls = [0]

    def stop_when() -> bool:
        polls[0] += 1
        if polls[0] == 1:
            db.down = True  # the database dies right before the assignment is served
            consumer.pending.append(("assign", [0]))
        elif polls[0] == 5:
            assert consumer.paused == {0}
            db.down = False
        return drained(consumer, db)()

    consumer.stop_when = stop_when
    loop.run(consumer.stop)
    assert writer.applied == [(0, 5), (0, 6), (0, 7)]


def test_conflict_rereads_the_stored_offset_of_that_partition(db: Database) -> None:
    loop, consumer, writer = make_loop(db, {0: 6})
    consumer.pending.append(("assign", [0]))
    first = [True]

    def on_write() -> None:
        if first[0]:
            first[0] = False
            db.stored[0] = 4  # another process advanced partition 0 behind our back

    writer.on_write = on_write
    consumer.stop_when = drained(consumer, db)
    loop.run(consumer.stop)
    assert writer.applied == [(0, 4), (0, 5)]
    assert loop.stats.conflicts == 1
    assert loop.stats.resyncs == 1


def test_stop_closes_the_connection(db: Database) -> None:
    loop, consumer, _ = make_loop(db, {0: 0})
    consumer.pending.append(("assign", [0]))
    connections: list[Any] = []
    original = loop._connect

    def tracking() -> Any:
        conn = original()
        connections.append(conn)
        return conn

    loop._connect = tracking
    consumer.stop_when = lambda: True
    loop.run(consumer.stop)
    assert connections and all(c.closed for c in connections)


def test_the_next_batch_is_decoded_while_the_previous_one_writes(db: Database) -> None:
    loop, consumer, writer = make_loop(db, {0: 40})
    consumer.pending.append(("assign", [0]))
    writing = threading.Event()
    overlaps: list[bool] = []
    plain_decode = writer.decode

    def slow_write() -> None:
        writing.set()
        threading.Event().wait(0.03)

    def decode(messages: Sequence[Msg]) -> Any:
        overlaps.append(writing.is_set())
        return plain_decode(messages)

    original_write = writer.write_decoded

    def write_decoded(*args: Any) -> WriteResult:
        try:
            return original_write(*args)
        finally:
            writing.clear()

    writer.on_write = slow_write
    writer.decode = decode  # type: ignore[method-assign]
    writer.write_decoded = write_decoded  # type: ignore[method-assign,assignment]
    consumer.stop_when = drained(consumer, db)
    loop.run(consumer.stop)
    assert sorted(writer.applied) == [(0, o) for o in range(40)]
    assert any(overlaps), "decoding never overlapped a write"


def _kafka_changes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage().split(" (")[0]
        for r in caplog.records
        if r.getMessage().startswith("Kafka") and r.levelno >= logging.WARNING
    ]


def test_a_stale_all_brokers_down_is_not_an_outage(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # Delivered after the recovery it predates: the cluster answers, nothing is logged.
    loop, _, _ = make_loop(db, {0: 1})
    caplog.set_level(logging.DEBUG, logger="factflow_lineage.consumer")
    loop.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    loop._confirm_kafka_down()
    assert not loop.kafka.down
    assert _kafka_changes(caplog) == []


def test_a_confirmed_outage_is_logged_once_down_and_once_up(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    loop, consumer, _ = make_loop(db, {0: 1})
    caplog.set_level(logging.INFO, logger="factflow_lineage.consumer")
    consumer.reachable = False
    for _ in range(3):
        loop.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
        loop._confirm_kafka_down()
    assert loop.kafka.down
    consumer.reachable = True
    loop._last_probe = 0.0
    loop._probe_kafka()
    # A stale error from the outage, delivered after the recovery: ignored.
    loop.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    loop._confirm_kafka_down()
    assert not loop.kafka.down
    assert _kafka_changes(caplog) == [
        "Kafka unavailable",
        "Kafka available again after 0.0s, resuming",
    ]


def _begun_at_the_stored_offset(writer: FakeWriter) -> None:
    """Every batch the writer received began where the projection stood."""
    wrong = [(p, first, stored) for p, first, stored in writer.starts if first != (stored or 0)]
    assert not wrong, f"batches submitted past or before the stored offset: {wrong}"


def test_a_batch_fetched_past_the_stored_offset_is_never_submitted(db: Database) -> None:
    # The consumer delivers from offset 5 while the projection stands at 2 (a
    # fetch made before a re-seek): the loop re-reads from 2.
    db.stored = {0: 2}
    loop, consumer, writer = make_loop(db, {0: 9})
    consumer.pending.append(("assign", [0]))
    polls = [0]

    def stop_when() -> bool:
        polls[0] += 1
        if polls[0] == 1:
            consumer._rebalance()
            consumer.fetch[0] = 5
        return drained(consumer, db)()

    consumer.stop_when = stop_when
    loop.run(consumer.stop)
    assert sorted(writer.applied) == [(0, o) for o in range(2, 9)]
    _begun_at_the_stored_offset(writer)
    assert not writer.skipped  # the log has offsets 2..4: nothing to skip


def test_with_nothing_stored_a_batch_must_begin_at_the_log_start(db: Database) -> None:
    loop, consumer, writer = make_loop(db, {0: 6, 1: 3})
    consumer.low = {1: 1}
    consumer.pending.append(("assign", [0, 1]))
    polls = [0]

    def stop_when() -> bool:
        polls[0] += 1
        if polls[0] == 1:
            consumer._rebalance()
            consumer.fetch[0] = 2  # not where the log begins
        return drained(consumer, db)()

    consumer.stop_when = stop_when
    loop.run(consumer.stop)
    assert sorted(writer.applied) == [(0, o) for o in range(6)] + [(1, 1), (1, 2)]
    first_batches = {p: first for p, first, stored in writer.starts if stored is None}
    assert first_batches == {0: 0, 1: 1}


def test_a_gap_among_the_fetched_messages_holds_the_partition(db: Database) -> None:
    db.stored = {0: 2, 1: 0}
    loop, consumer, _ = make_loop(db, {0: 9, 1: 2})
    loop._conn = FakeConn(db)  # type: ignore[assignment]
    consumer.pending.append(("assign", [0, 1]))
    consumer.consume(0)
    fetched = [Msg(0, 2), Msg(0, 3), Msg(1, 0), Msg(0, 5), Msg(0, 6)]
    accepted = loop._accept(fetched)  # type: ignore[arg-type]
    assert [(m.partition(), m.offset()) for m in accepted] == [(1, 0)]
    assert 0 in consumer.paused and 0 in loop._unpositioned


def test_offsets_the_log_lost_are_skipped_once_with_one_error(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # Stored 2, but retention deleted offsets 2..4 before they were projected:
    # the consumer can only start at 5. Not a loop forever, not silent.
    caplog.set_level(logging.INFO, logger="factflow_lineage.consumer")
    db.stored = {0: 2}
    loop, consumer, writer = make_loop(db, {0: 9})
    consumer.low = {0: 5}
    consumer.pending.append(("assign", [0]))
    consumer.stop_when = drained(consumer, db)
    loop.run(consumer.stop)
    assert sorted(writer.applied) == [(0, o) for o in range(5, 9)]
    assert writer.skipped == [(0, 2, 5)]
    _begun_at_the_stored_offset(writer)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "partition 0: offsets 2..4" in errors[0], errors


def test_a_database_outage_is_probed_about_once_a_second_however_long(db: Database) -> None:
    # The backoff grows towards backoff_max (15 s); the projector must still
    # try the database about once a second, to resume soon after it answers.
    loop, consumer, _ = make_loop(db, {0: 6})
    loop._backoff = Backoff(initial=0.5, maximum=15.0)
    delays: list[float] = []

    def wait(delay: float, stop: threading.Event) -> None:
        delays.append(delay)
        if len(delays) >= 12:
            db.down = False  # the database answers again

    loop._wait = wait  # type: ignore[method-assign]
    consumer.pending.append(("assign", [0]))
    polls = [0]

    def stop_when() -> bool:
        polls[0] += 1
        if polls[0] == 2:
            db.down = True
        return drained(consumer, db)()

    consumer.stop_when = stop_when
    loop.run(consumer.stop)
    assert len(delays) >= 12
    assert all(0.5 <= d <= 1.0 for d in delays), delays
    assert db.stored == {0: 6}
