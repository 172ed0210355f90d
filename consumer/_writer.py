"""One batch, one transaction: move the offsets, apply the events, keep the rejects.

The order inside the transaction matters. The conditional offset move comes
first, so that a batch whose offsets someone else moved (a zombie, a rebuild's
swap) or that does not begin at the stored offset is rolled back before it
touched a projection row, and so that the row locks a rebuild's swap waits for
are taken before anything else. The owner check comes second (``_owner``): after
the move, so that it reads the schema the move landed in (a swap renames
schemas while the move waits), and before any row, so that a projector whose
schema was taken over commits nothing more.

A batch the projection rejects (a value PostgreSQL refuses, a constraint) is
split in two halves, each its own transaction, down to the one message that is
to blame; that message becomes a dead letter and everything else is applied.
Halves are cut in (partition, offset) order, so each half covers a contiguous
range of every partition and begins exactly where the half before it ended:
each half passes the same fence as a whole batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from factflow_lineage.errors import DecodeError

from ._decoder import (
    DeadLetter,
    Decode,
    DecodedBatch,
    KafkaMessage,
    collect,
    dead_letter,
    decode_messages,
    default_decode,
    message_values,
)
from ._dlq import insert_dead_letters
from ._offload import PlanningWorker
from ._offsets import advance_offsets, offsets_after, skip_lost
from ._owner import check as check_owner
from ._projection import Projection
from ._runtime import DEFAULT_RUNTIME, RuntimeSettings

log = logging.getLogger("factflow_lineage.consumer")

# Errors that blame the data, not the database being away: the batch is split
# until the offending message is found. ProgrammingError is deliberately not
# here: a bad statement is a bug, and a bug must stop the projector, not fill
# the dead-letter table.
REJECTED: tuple[type[Exception], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    DecodeError,
    ValueError,
)

# Deadlocks and serialization failures between projectors are transient: the
# same batch is retried as it is, a few times, before it counts as an outage.
# So is a unique violation: two transactions inserting the same row at once
# (events of one row in two partitions: a producer keying off-contract); on
# retry the row exists and the insert becomes an update. Only if the error
# persists does the batch count as refused (and get split, see above).
_ROLLBACK_RETRIES = 5
_TRANSIENT: tuple[type[Exception], ...] = (
    psycopg.errors.TransactionRollback,
    psycopg.errors.UniqueViolation,
)


class ProjectionLike(Protocol):
    """What the writer needs of ``Projection``: apply events inside a transaction.

    ``apply`` may return stats with ``rejected``: events it left out as
    unprojectable, each with its ``index`` in ``events`` and a ``reason``; the
    writer turns those into dead letters in the same transaction.
    """

    def apply(self, conn: psycopg.Connection[Any], events: Sequence[Mapping[str, Any]]) -> Any: ...


# Optionally, a projection splits ``apply`` in two like ``Projection``:
# ``plan(events)``, pure CPU and thread-safe, and ``apply_plan(conn, plan)``,
# the SQL. The writer then plans in ``decode`` (see there); a projection with
# only ``apply`` is planned inside the transaction, as before.


def _rejected(stats: Any) -> Sequence[Any]:
    rejected = getattr(stats, "rejected", None)
    return () if rejected is None else tuple(rejected)


@dataclass(slots=True)
class WriteResult:
    """What a write committed, and which partitions conflicted (then nothing of them did)."""

    committed: dict[int, int] = field(default_factory=dict)  # partition -> new next offset
    conflicts: frozenset[int] = frozenset()
    events: int = 0
    dead_letters: int = 0
    transactions: int = 0

    def merge(self, other: WriteResult) -> None:
        self.committed.update(other.committed)
        self.conflicts |= other.conflicts
        self.events += other.events
        self.dead_letters += other.dead_letters
        self.transactions += other.transactions


class _Conflict(Exception):
    """Internal: roll the batch back, its offsets moved under us."""

    def __init__(self, partitions: frozenset[int]) -> None:
        super().__init__(f"offsets moved for partitions {sorted(partitions)}")
        self.partitions = partitions


class BatchWriter:
    """Writes batches of one topic into one projection schema, exactly once."""

    def __init__(
        self,
        *,
        schema: str,
        topic: str,
        projection: ProjectionLike,
        decode: Decode,
        group: str | None = None,
    ) -> None:
        self.schema = schema
        self.topic = topic
        # The consumer group that must own the schema for a batch to commit
        # (None: no owner check, as for a rebuild's private schema).
        self.group = group
        self.projection = projection
        self._decode = decode
        plan = getattr(projection, "plan", None)
        apply_plan = getattr(projection, "apply_plan", None)
        self._plan = plan if callable(plan) and callable(apply_plan) else None
        self._apply_plan = apply_plan
        # Set while a worker process decodes and plans (see ``planning_worker``).
        self._worker: PlanningWorker | None = None

    @contextmanager
    def planning_worker(self, runtime: RuntimeSettings = DEFAULT_RUNTIME) -> Iterator[None]:
        """Decode and plan in a worker process while inside (see _offload).

        Only with ``runtime.planning_process``, the schemas package's decoder
        and ``Projection``; otherwise batches are decoded in this process.
        """
        # The worker plans with Projection's planner and decodes with the
        # schemas package's decoder: for anything else, no worker.
        own_plan = getattr(type(self.projection), "plan", None) is Projection.plan
        if not runtime.planning_process or not own_plan or self._decode is not default_decode():
            yield
            return
        with PlanningWorker(runtime) as worker:
            self._worker = worker
            try:
                yield
            finally:
                self._worker = None

    def decode(self, messages: Sequence[KafkaMessage]) -> DecodedBatch:
        """Decode and plan ``messages``: pure CPU, the loop does it while the previous batch writes.

        The plan (coalescing, encoding for COPY) costs about as much client
        CPU as the decoding; made here, it leaves the writer thread only the
        fold and the SQL. It covers exactly the events of ``batch.sources``,
        so the transaction still holds the offsets, rows and dead letters of
        exactly these messages. Inside ``planning_worker``, a worker process
        does both, and the decoded events stay there (``batch.events`` empty).
        """
        if self._worker is not None and messages:
            done = self._worker.decode_and_plan(message_values(messages))
            if done is not None and done[1] is not None:
                failures, planned = done
                batch = collect(messages, self.topic, failures)
                batch.plan = planned
                return batch
        batch = decode_messages(messages, self.topic, self._decode)
        if self._plan is not None and batch.events:
            try:
                batch.plan = self._plan(batch.events)
            except REJECTED:
                # Left to ``apply`` inside the transaction, which raises it
                # again where a refused batch is handled (split, dead letter).
                batch.plan = None
        return batch

    def write(
        self,
        conn: psycopg.Connection[Any],
        messages: Sequence[KafkaMessage],
        expected: Mapping[int, int | None],
    ) -> WriteResult:
        """Decode and project ``messages``; see ``write_decoded``."""
        return self.write_decoded(conn, messages, self.decode(messages), expected)

    def write_decoded(
        self,
        conn: psycopg.Connection[Any],
        messages: Sequence[KafkaMessage],
        batch: DecodedBatch,
        expected: Mapping[int, int | None],
    ) -> WriteResult:
        """Project ``messages`` (decoded as ``batch``); ``expected``: stored offset per partition.

        ``messages`` must be contiguous and in offset order per partition; a
        partition whose messages do not begin at its stored offset conflicts.
        psycopg's OperationalError (the database went away) and
        ``ProjectionOwned`` (the schema was taken over) propagate; everything
        else is handled here.
        """
        try:
            return self._transaction(conn, batch, expected)
        except REJECTED as e:
            if len(messages) == 1:
                return self._reject(conn, messages[0], e, expected)
            log.info("batch of %d rejected (%s); isolating the message to blame", len(messages), e)
        return self._split(conn, messages, expected)

    def _transaction(
        self,
        conn: psycopg.Connection[Any],
        batch: DecodedBatch,
        expected: Mapping[int, int | None],
    ) -> WriteResult:
        moves = offsets_after(expected, batch.ranges)
        for attempt in range(_ROLLBACK_RETRIES + 1):
            try:
                with conn.transaction():
                    conflicts = advance_offsets(conn, self.schema, self.topic, moves)
                    if conflicts:
                        raise _Conflict(conflicts)
                    if self.group is not None:
                        check_owner(conn, self.schema, self.topic, self.group)
                    letters = batch.dead_letters
                    rejected: Sequence[Any] = ()
                    if batch.plan is not None:
                        assert self._apply_plan is not None
                        rejected = _rejected(self._apply_plan(conn, batch.plan))
                    elif batch.events:
                        rejected = _rejected(self.projection.apply(conn, batch.events))
                    if rejected:
                        letters = letters + [
                            dead_letter(
                                batch.sources[r.index],
                                self.topic,
                                f"rejected by the projection: {r.reason}",
                            )
                            for r in rejected
                        ]
                    insert_dead_letters(conn, self.schema, letters)
            except _Conflict as c:
                return WriteResult(conflicts=c.partitions)
            except _TRANSIENT as e:
                if attempt == _ROLLBACK_RETRIES or conn.broken:
                    raise
                log.info("batch rolled back (%s), retrying", type(e).__name__)
                time.sleep(0.01 * 2**attempt)
                continue
            return WriteResult(
                committed={m.partition: m.next_offset for m in moves},
                events=len(batch.sources) - len(rejected),
                dead_letters=len(letters),
                transactions=1,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _split(
        self,
        conn: psycopg.Connection[Any],
        messages: Sequence[KafkaMessage],
        expected: Mapping[int, int | None],
    ) -> WriteResult:
        ordered = sorted(messages, key=_partition_offset)
        middle = len(ordered) // 2
        result = WriteResult()
        positions = dict(expected)
        for half in (ordered[:middle], ordered[middle:]):
            part = self.write(conn, half, positions)
            result.merge(part)
            if part.conflicts:
                # The rest would conflict too; the caller re-reads from the stored offsets.
                break
            positions.update(part.committed)
        return result

    def _reject(
        self,
        conn: psycopg.Connection[Any],
        message: KafkaMessage,
        error: Exception,
        expected: Mapping[int, int | None],
    ) -> WriteResult:
        partition, offset = _partition_offset(message)
        letter = dead_letter(
            message,
            self.topic,
            f"rejected by the projection: {type(error).__name__}: {_one_line(error)}",
        )
        log.warning("partition %d offset %d rejected: %s", partition, offset, letter.error)
        batch = DecodedBatch(dead_letters=[letter], ranges={partition: (offset, offset)})
        return self._transaction(conn, batch, expected)

    def skip_lost(
        self, conn: psycopg.Connection[Any], partition: int, stored: int, to: int
    ) -> bool:
        """Move ``partition`` over offsets ``stored`` .. ``to - 1`` the topic no longer holds.

        One transaction: the conditional move, the owner check, and a dead
        letter at ``stored`` naming the range, so that ``factflow dlq list``
        shows the loss where it happened. False: the stored offset moved (the
        caller re-reads it).
        """
        letter = DeadLetter(
            topic=self.topic,
            partition=partition,
            offset=stored,
            key=None,
            raw=None,
            error=(
                f"offsets {stored}..{to - 1} of partition {partition} were deleted from the "
                "topic (retention) before they were projected: their events are missing"
            ),
        )
        with conn.transaction():
            if not skip_lost(conn, self.schema, self.topic, partition, stored, to):
                return False
            if self.group is not None:
                check_owner(conn, self.schema, self.topic, self.group)
            insert_dead_letters(conn, self.schema, [letter])
        return True


def _partition_offset(message: KafkaMessage) -> tuple[int, int]:
    partition, offset = message.partition(), message.offset()
    assert partition is not None and offset is not None
    return partition, offset


def _one_line(error: BaseException) -> str:
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
