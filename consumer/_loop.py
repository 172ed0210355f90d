"""The consume loop: batches from Kafka, one PostgreSQL transaction each.

Positions come from PostgreSQL, never from Kafka: on every assignment the loop
reads the stored offsets of the new partitions and starts them there
(OFFSET_BEGINNING when none is stored). Kafka's own commit follows each
PostgreSQL commit asynchronously, for lag dashboards only.

When PostgreSQL goes away the loop pauses every partition, drops what it had
fetched, waits with backoff while still serving the group (rebalance callbacks,
poll interval), and once it is back re-reads the stored offsets, seeks there and
resumes. When a conditional offset move conflicts (someone else advanced a
partition) it does the same for the partitions concerned. Both paths reuse one
mechanism: "seek to what PostgreSQL says", which is always right.

A batch is submitted only if, for each of its partitions, its messages are
contiguous and begin at the stored offset (for a partition with none stored:
at the log start, the broker's low watermark); otherwise the partition is
re-read from PostgreSQL. The offset fence checks the beginning again inside the
transaction (``_offsets``): the loop's check saves a wasted transaction and
says why, the fence is what guarantees it. The one gap let through is the one
the broker proves: offsets below the low watermark, deleted by retention before
they were projected; they are skipped once, with an ERROR line naming them and
a dead letter recording them (``BatchWriter.skip_lost``).

One batch is written while the next is fetched and decoded: the write runs
in a writer thread (psycopg releases the GIL while PostgreSQL works), so the
decoding and planning of batch N+1 (``BatchWriter.decode``, in a worker
process unless ``RuntimeSettings.planning_process`` is off) overlap the fold
and the SQL of batch N. At most one write is in flight, and the PostgreSQL
connection is used by one thread at a time: the main thread touches it (assignments, resyncs,
reconnects) only after waiting for the write in flight ("draining").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from factflow_lineage.db import first_line
from factflow_lineage.errors import BrokerUnavailable, DatabaseUnavailable

from ._decoder import DecodedBatch
from ._faults import Backoff, Outage
from ._offsets import load_offsets
from ._runtime import DEFAULT_RUNTIME, ProjectorRuntime, RuntimeSettings
from ._writer import BatchWriter, WriteResult

log = logging.getLogger("factflow_lineage.consumer")

# A connection problem, as psycopg and our own connect() report it.
PG_DOWN: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    DatabaseUnavailable,
)

# The error that means "the cluster is unreachable right now". Per-connection
# errors (_TRANSPORT, _RESOLVE) are not: with several brokers one may be down
# while the others serve, and librdkafka delivers them late, after a recovery.
# Even this one can arrive late: queued before a recovery, delivered after the
# probe that saw it (librdkafka stamps no time on errors). So it is only a
# suspicion until a metadata probe fails too (see _confirm_kafka_down).
_KAFKA_DOWN = {KafkaError._ALL_BROKERS_DOWN}
_PROBE_EVERY = 2.0  # seconds between metadata probes while Kafka is down


@dataclass(frozen=True, kw_only=True)
class LoopOptions:
    """How the loop batches and waits."""

    batch_max: int = 50_000
    poll_timeout: float = 0.2
    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    # While PostgreSQL is down, a reconnect is tried at least this often
    # (jittered): a connection attempt costs the database next to nothing, and
    # the backoff alone would resume up to backoff_max after it answered.
    pg_probe_interval: float = 1.0
    commit_to_kafka: bool = True
    # Garbage collection and thread switching while the loop runs (see _runtime).
    runtime: RuntimeSettings = DEFAULT_RUNTIME


@dataclass(slots=True)
class ProjectorStats:
    """Running totals of one projector process."""

    events: int = 0
    dead_letters: int = 0
    batches: int = 0
    transactions: int = 0
    conflicts: int = 0
    resyncs: int = 0
    started: float = field(default_factory=time.monotonic)


class ProjectorLoop:
    """Drives one group consumer and one PostgreSQL connection; see the module docstring."""

    def __init__(
        self,
        *,
        consumer: Consumer,
        topic: str,
        writer: BatchWriter,
        connect: Callable[[], psycopg.Connection[Any]],
        options: LoopOptions,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._writer = writer
        self._schema = writer.schema
        self._connect = connect
        self._options = options
        self._conn: psycopg.Connection[Any] | None = None
        # Assigned partitions with a known position: the stored next offset
        # (None: nothing stored yet, started from the beginning).
        self._positions: dict[int, int | None] = {}
        # Assigned partitions waiting to be positioned from PostgreSQL (paused).
        self._unpositioned: set[int] = set()
        # Held partitions whose last batch began past their stored offset: the
        # resync asks the broker whether the log lost what lies between.
        self._began_past: set[int] = set()
        self._backoff = Backoff(initial=options.backoff_initial, maximum=options.backoff_max)
        self.pg = Outage(name="PostgreSQL", log=log)
        self.kafka = Outage(name="Kafka", log=log)
        self._last_probe = 0.0
        self._kafka_suspect: str | None = None  # an all-brokers-down not yet confirmed
        self._resync_after = 0.0  # a partition that could not be sought waits until then
        self.stats = ProjectorStats()
        self._executor: ThreadPoolExecutor | None = None
        # The write in flight: its future, message count and start time.
        self._inflight: tuple[Future[WriteResult], int, float] | None = None

    # -- rebalance callbacks (called by librdkafka from inside consume/poll) ------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain()  # the connection is ours again, positions are current
        mine = [tp for tp in partitions if tp.topic == self._topic]
        numbers = [tp.partition for tp in mine]
        log.info("assigned partitions %s", numbers)
        self.kafka.recovered()
        stored: dict[int, int] | None = None
        if self._conn is not None and not self._unpositioned:
            try:
                stored = load_offsets(self._conn, self._schema, self._topic, numbers)
            except PG_DOWN as e:
                self._pg_lost(e)
        if stored is None:
            # Cannot know where to start: assign, hold them paused until the
            # database answers (the main loop positions them then).
            consumer.incremental_assign(mine)
            self._pause(numbers)
            self._unpositioned.update(numbers)
            return
        for tp in mine:
            position = stored.get(tp.partition)
            self._positions[tp.partition] = position
            tp.offset = OFFSET_BEGINNING if position is None else position
        consumer.incremental_assign(mine)

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Let the write in flight commit first: the next owner starts where it ended.
        self._drain()
        self._forget(partitions)
        log.info("revoked partitions %s", [tp.partition for tp in partitions])
        consumer.incremental_unassign(partitions)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may already own them; our conditional offset moves
        # would fail for them anyway, so simply let go.
        self._drain()
        self._forget(partitions)
        log.warning("lost partitions %s", [tp.partition for tp in partitions])
        consumer.incremental_unassign(partitions)

    def on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback: outages are logged once, the rest at info."""
        if error.fatal():
            # Raised from inside consume(); ends the loop with BrokerUnavailable.
            raise KafkaException(error)
        if error.code() in _KAFKA_DOWN:
            self._suspect_kafka_down(error.str())
        else:
            log.debug("Kafka: %s", error.str())

    # -- main loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Project until ``stop`` is set; the batch in hand is finished first."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector-writer")
        runtime = ProjectorRuntime(self._options.runtime)
        try:
            with runtime, self._writer.planning_worker(self._options.runtime):
                self._run(stop, runtime)
        except KafkaException as e:
            raise BrokerUnavailable(f"Kafka consumer failed: {e}") from e
        except BaseException:
            # Failing (or aborted by a second signal): the write in flight must
            # not commit half a shutdown later; cancel it, it rolls back.
            if self._inflight is not None and self._conn is not None:
                try:
                    self._conn.cancel_safe()
                except psycopg.Error as e:
                    log.debug("cancelling the write in flight: %s", e)
            raise
        finally:
            self._executor.shutdown(wait=True)
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, stop: threading.Event, runtime: ProjectorRuntime) -> None:
        while not stop.is_set():
            if self._conn is None or (
                self._unpositioned and time.monotonic() >= self._resync_after
            ):
                self._drain()
                if not self._recover(stop):
                    continue
            if self._kafka_suspect is not None:
                self._confirm_kafka_down()
            if self.kafka.down:
                self._probe_kafka()
            messages = self._accept(self._consumer.consume(self._options.batch_max, 0))
            if not messages:
                if self._inflight is not None:
                    self._drain()  # nothing queued: finish the write, then wait
                    continue
                messages = self._accept(self._wait_for_messages())
                if not messages:
                    runtime.between_batches()
                    continue
            batch = self._writer.decode(messages)  # decode + plan: overlaps the write in flight
            self._drain()
            self._check_starts(batch)
            self._submit(*self._still_positioned(messages, batch))
            # While PostgreSQL writes: the main thread has nothing else to do.
            runtime.between_batches()
        self._drain()

    def _wait_for_messages(self) -> list[Message]:
        """Block until a message arrives (or ``poll_timeout``), then take the rest queued.

        Under load the queue refills while a batch is written, so batches grow to
        ``batch_max`` on their own; when traffic is light a single event is not
        held back waiting for company (freshness).
        """
        first = self._consumer.poll(self._options.poll_timeout)
        if first is None:
            return []
        return [first, *self._consumer.consume(self._options.batch_max - 1, 0)]

    def _submit(self, messages: list[Message], batch: DecodedBatch) -> None:
        if not messages:
            return
        assert self._executor is not None and self._conn is not None and self._inflight is None
        future = self._executor.submit(
            self._writer.write_decoded, self._conn, messages, batch, dict(self._positions)
        )
        self._inflight = (future, len(messages), time.perf_counter())

    def _drain(self) -> None:
        """Wait for the write in flight, if any, and take in its outcome."""
        if self._inflight is None:
            return
        future, size, started = self._inflight
        try:
            result = future.result()
        except PG_DOWN as e:
            self._inflight = None
            self._pg_lost(e)
            return
        # Cleared only now: interrupted while waiting, the write is still in flight.
        self._inflight = None
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "batch of %d messages: %d events, %d transactions, %.1f ms",
                size,
                result.events,
                result.transactions,
                (time.perf_counter() - started) * 1000,
            )
        self._took(result)

    def _check_starts(self, batch: DecodedBatch) -> None:
        """Hold the partitions of ``batch`` that do not begin where the projection stands.

        Called once the write before it is drained, so positions are the stored
        offsets as of its commit. A partition with no stored offset must begin
        at the log start (asked of the broker, once per partition: after its
        first commit it has a stored offset).
        """
        positions = self._positions
        held: list[int] = []
        for p, (first, _) in batch.ranges.items():
            if p not in positions:
                continue
            position = positions[p]
            if position is None:
                low = self._low_watermark(p)
                if low == first:
                    continue
                where = "an unknown log start" if low is None else f"the log start {low}"
            elif first == position:
                continue
            else:
                where = f"the stored offset {position}"
                if first > position:
                    self._began_past.add(p)
            log.info(
                "partition %d: batch begins at offset %d, not at %s; re-reading from the "
                "stored offset",
                p,
                first,
                where,
            )
            held.append(p)
        self._hold(held)

    def _low_watermark(self, partition: int) -> int | None:
        """The partition's first offset in the log, as the broker says now (None: unknown)."""
        try:
            marks = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, partition), timeout=5.0, cached=False
            )
        except KafkaException as e:
            log.info("partition %d: no low watermark (%s)", partition, e)
            return None
        return None if marks is None or marks[0] < 0 else int(marks[0])

    def _still_positioned(
        self, messages: list[Message], batch: DecodedBatch
    ) -> tuple[list[Message], DecodedBatch]:
        """Drop what the write just drained made stale (a conflict, an outage, a wrong start).

        The partitions dropped are held for a resync, which seeks them back:
        nothing dropped here is lost.
        """
        positions = self._positions
        if all(p in positions for p in batch.ranges):
            return messages, batch
        kept = self._accept(messages)
        return kept, self._writer.decode(kept)

    def _accept(self, messages: Sequence[Message]) -> list[Message]:
        """Messages of positioned partitions, at or past their stored offset; errors handled.

        Per partition, what is accepted is contiguous: a message that does not
        follow the one before it (a gap, a repeat) means the stream was not one
        run from one position, and the partition is re-read from PostgreSQL.
        """
        accepted: list[Message] = []
        positions = self._positions
        last: dict[int, int] = {}  # partition -> offset of its last accepted message
        broken: dict[int, tuple[int, int]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._message_error(error)
                continue
            partition = message.partition()
            if partition not in positions or message.topic() != self._topic:
                continue  # revoked, lost, or waiting for a resync
            position = positions[partition]
            offset = message.offset()
            if offset is None or (position is not None and offset < position):
                continue  # fetched before a seek; already applied
            before = last.get(partition)
            if before is not None and offset != before + 1:
                broken.setdefault(partition, (before, offset))
                continue
            last[partition] = offset
            accepted.append(message)
        if broken:
            for p, (before, offset) in sorted(broken.items()):
                log.info(
                    "partition %d: offset %d follows %d among the messages fetched; "
                    "re-reading from the stored offset",
                    p,
                    offset,
                    before,
                )
            self._hold(broken)
            accepted = [m for m in accepted if m.partition() not in broken]
        return accepted

    def _message_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.code() in _KAFKA_DOWN:
            self._suspect_kafka_down(error.str())
        else:
            log.warning("Kafka: %s", error.str())

    def _took(self, result: WriteResult) -> None:
        """Account for a finished write: positions, advisory commit, conflicts."""
        stats = self.stats
        stats.batches += 1
        stats.events += result.events
        stats.dead_letters += result.dead_letters
        stats.transactions += result.transactions
        for partition, offset in result.committed.items():
            if partition in self._positions:
                self._positions[partition] = offset
        if result.committed and self._options.commit_to_kafka:
            self._commit_to_kafka(result.committed)
        if result.conflicts:
            stats.conflicts += 1
            log.info(
                "offsets of partitions %s moved under us (rebalance or rebuild); "
                "re-reading from the stored offsets",
                sorted(result.conflicts),
            )
            self._hold(result.conflicts)

    def _hold(self, partitions: Iterable[int]) -> None:
        """Pause ``partitions`` until a resync positions them from PostgreSQL again."""
        held = [p for p in partitions if p in self._positions]
        if not held:
            return
        self._pause(held)
        self._unpositioned.update(held)
        for p in held:
            self._positions.pop(p, None)

    def _commit_to_kafka(self, committed: dict[int, int]) -> None:
        offsets = [TopicPartition(self._topic, p, o) for p, o in committed.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:
            # Advisory only: PostgreSQL holds the real position.
            log.debug("advisory Kafka commit failed: %s", e)

    # -- recovery -----------------------------------------------------------------------

    def _pg_lost(self, error: BaseException) -> None:
        """The database went away: hold every partition until it is back."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        held = set(self._positions) | self._unpositioned
        self._positions.clear()
        self._unpositioned = held
        self._pause(held)
        self.pg.failed(first_line(error), self._backoff.next_delay())

    def _recover(self, stop: threading.Event) -> bool:
        """Reconnect if needed and position the held partitions; False: not yet, waited."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            if self._unpositioned:
                self._resync(self._conn, sorted(self._unpositioned))
        except PG_DOWN as e:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            delay = min(self._backoff.next_delay(), self._options.pg_probe_interval)
            self.pg.failed(first_line(e), delay)
            self._wait(delay, stop)
            return False
        self._backoff.reset()
        self.pg.recovered()
        return True

    def _resync(self, conn: psycopg.Connection[Any], partitions: Sequence[int]) -> None:
        """Seek ``partitions`` to their stored offsets and resume them."""
        assigned = {tp.partition for tp in self._consumer.assignment() if tp.topic == self._topic}
        stored = load_offsets(conn, self._schema, self._topic, partitions)
        resumed: list[int] = []
        for p in partitions:
            if p not in assigned:
                self._unpositioned.discard(p)  # revoked while held
                continue
            position = stored.get(p)
            if p in self._began_past and position is not None:
                position = self._over_lost_offsets(conn, p, position)
                if position is None:
                    self._resync_after = time.monotonic() + 0.5
                    continue
            try:
                self._consumer.seek(
                    TopicPartition(
                        self._topic, p, OFFSET_BEGINNING if position is None else position
                    )
                )
            except KafkaException as e:
                # Still held (paused); tried again shortly.
                log.info("partition %d not seekable yet (%s); retrying", p, e)
                self._resync_after = time.monotonic() + 0.5
                continue
            self._unpositioned.discard(p)
            self._began_past.discard(p)
            self._positions[p] = position
            resumed.append(p)
        self._resume(resumed)
        self.stats.resyncs += 1
        log.info("partitions %s positioned from PostgreSQL", resumed)

    def _over_lost_offsets(
        self, conn: psycopg.Connection[Any], partition: int, stored: int
    ) -> int | None:
        """Where to resume ``partition``, stored at ``stored``, whose batch began past it.

        If the broker no longer holds ``stored`` (retention deleted offsets
        before they were projected), nothing can ever fill the gap: the stored
        offset moves over it once, visibly. None: it moved meanwhile, re-read.
        """
        low = self._low_watermark(partition)
        if low is None or low <= stored:
            return stored  # the log has it: the batch was fetched from elsewhere
        if not self._writer.skip_lost(conn, partition, stored, low):
            return None
        log.error(
            "partition %d: offsets %d..%d were deleted from the topic (retention) before "
            "this projection applied them; their events are missing from it (recorded as a "
            "dead letter); going on from offset %d",
            partition,
            stored,
            low - 1,
            low,
        )
        return low

    def _wait(self, delay: float, stop: threading.Event) -> None:
        """Sleep ``delay`` seconds, serving the consumer (and dropping what it delivers)."""
        deadline = time.monotonic() + delay
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for message in self._consumer.consume(self._options.batch_max, min(remaining, 0.2)):
                if message.error() is not None:
                    self._message_error(message.error())  # type: ignore[arg-type]

    def _suspect_kafka_down(self, reason: str) -> None:
        if not self.kafka.down:
            self._kafka_suspect = reason

    def _confirm_kafka_down(self) -> None:
        """A metadata probe decides whether an all-brokers-down error is news or stale."""
        reason, self._kafka_suspect = self._kafka_suspect, None
        if reason is None or self.kafka.down:
            return
        try:
            self._consumer.list_topics(self._topic, timeout=1.0)
        except KafkaException:
            self.kafka.failed(reason)
            self._last_probe = time.monotonic()
            return
        log.debug("Kafka: %s (stale: the cluster answers)", reason)

    def _probe_kafka(self) -> None:
        """While Kafka is down, ask it for metadata now and then: an answer ends the outage.

        Messages arriving are no proof: they may have been fetched before it.
        """
        now = time.monotonic()
        if now - self._last_probe < _PROBE_EVERY:
            return
        self._last_probe = now
        try:
            self._consumer.list_topics(self._topic, timeout=1.0)
        except KafkaException:
            return
        self.kafka.recovered()

    # -- partition bookkeeping ----------------------------------------------------------

    def _forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self._topic:
                self._positions.pop(tp.partition, None)
                self._unpositioned.discard(tp.partition)
                self._began_past.discard(tp.partition)

    def _pause(self, partitions: Iterable[int]) -> None:
        tps = [TopicPartition(self._topic, p) for p in partitions]
        if tps:
            try:
                self._consumer.pause(tps)
            except KafkaException as e:
                log.debug("pause %s: %s", tps, e)

    def _resume(self, partitions: Iterable[int]) -> None:
        tps = [TopicPartition(self._topic, p) for p in partitions]
        if tps:
            try:
                self._consumer.resume(tps)
            except KafkaException as e:
                log.debug("resume %s: %s", tps, e)
