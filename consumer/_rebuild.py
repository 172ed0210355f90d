"""Rebuild by replay: the whole topic into a fresh schema, then an atomic swap.

1. Apply the projection's migrations into ``<schema>_rebuild_<ts>``.
2. Replay the topic from the beginning with a group-less consumer (every
   partition assigned), through the same batch writer the projector uses, while
   the live projection keeps serving queries and the live projector keeps going.
3. When the rebuild is within ``catch_up_lag`` events of the live projection's
   stored offsets, swap, in one transaction:
   lock the live ``consumer_offsets`` (the live projector's next batch waits on
   its very first statement), read the live offsets, apply the events between
   the rebuild's position and them, store them in the new schema, copy the
   live schema's owner (``projection_owner``: the live projector's group, which
   its batches check) into it, then rename live -> ``<schema>_old_<ts>`` and
   new -> ``<schema>``.
   The waiting live projector then resolves ``consumer_offsets`` in the new
   schema, finds exactly the offset it expected, and goes on. (Had the rebuild
   gone past it, its conditional move fails and it re-reads from the new offsets.)
4. Keep the old schema (and say how to drop it), or drop it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from psycopg import sql

from factflow_lineage.config import Settings
from factflow_lineage.db import connect, first_line
from factflow_lineage.errors import BrokerUnavailable, DatabaseUnavailable, LineageError, NotFound
from factflow_lineage.migrations import apply_migrations, projection_migrations

from ._decoder import Decode, default_decode
from ._offsets import TABLE as OFFSETS_TABLE
from ._offsets import load_offsets
from ._owner import TABLE as OWNER_TABLE
from ._owner import copy_owner
from ._runtime import DEFAULT_RUNTIME, ProjectorRuntime, RuntimeSettings
from ._writer import BatchWriter, ProjectionLike

log = logging.getLogger("factflow_lineage.consumer")


class RebuildError(LineageError):
    """The rebuild could not finish; the live projection is untouched."""


@dataclass(frozen=True, kw_only=True)
class RebuildOptions:
    """Tuning of a rebuild."""

    batch_max: int = 50_000
    drop_old: bool = False
    # Swap once the rebuild is this many events behind the live projection: the
    # live projector waits while the swap applies the rest, so keep it small.
    catch_up_lag: int = 20_000
    progress_every: float = 2.0
    lock_timeout_s: float = 60.0
    stall_timeout_s: float = 60.0
    # Garbage collection and thread switching while it runs (see _runtime).
    runtime: RuntimeSettings = DEFAULT_RUNTIME


@dataclass(frozen=True, kw_only=True)
class RebuildProgress:
    """A progress report: events replayed, their rate, what is left, and when it ends."""

    phase: str  # "replay" or "swap"
    events: int
    events_per_s: float
    lag: int  # events left in the topic after the rebuild's position
    eta_s: float | None


@dataclass(frozen=True, kw_only=True)
class RebuildReport:
    """What a rebuild did."""

    schema: str
    old_schema: str | None  # where the previous projection now lives (None: none, or dropped)
    dropped_old: bool
    events: int
    dead_letters: int
    seconds: float
    offsets: dict[int, int]


def _schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        is not None
    )


def _table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, table),
    ).fetchone()
    return row is not None


def _default_projection(schema: str) -> ProjectionLike:
    from ._projection import Projection

    projection: ProjectionLike = Projection(schema)
    return projection


class _Replay:
    """The group-less consumer of a rebuild and the positions it reached."""

    def __init__(self, settings: Settings, options: RebuildOptions, tag: str) -> None:
        self.topic = settings.kafka.topic
        self.options = options
        config = {
            "bootstrap.servers": settings.kafka.bootstrap,
            # Required by the client, never joined: partitions are assigned.
            "group.id": f"factflow-rebuild-{tag}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
        try:
            self.consumer = Consumer(
                {
                    **config,
                    "fetch.max.bytes": 64 * 1024 * 1024,
                    "max.partition.fetch.bytes": 8 * 1024 * 1024,
                    "queued.max.messages.kbytes": 256 * 1024,
                }
            )
            # Watermark queries get their own connection: on the fetching one
            # they queue behind the broker's long-polled fetches (0.5 s each).
            self._marks = Consumer(config)
            metadata = self.consumer.list_topics(self.topic, timeout=15)
        except KafkaException as e:
            raise BrokerUnavailable(f"Kafka at {settings.kafka.bootstrap}: {e}") from e
        described = metadata.topics.get(self.topic)
        if described is None or described.error is not None or not described.partitions:
            raise NotFound(f"topic {self.topic!r} does not exist")
        self.partitions = sorted(described.partitions)
        self.positions: dict[int, int | None] = dict.fromkeys(self.partitions)
        # Offset after the last message seen per partition (applied or not).
        self.seen: dict[int, int] = {}
        self.consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self.partitions]
        )

    def batch(self, timeout: float) -> list[Message]:
        messages = self.consumer.consume(self.options.batch_max, timeout)
        good: list[Message] = []
        for m in messages:
            error = m.error()
            if error is not None:
                if error.fatal():
                    raise BrokerUnavailable(f"Kafka consumer failed: {error.str()}")
                continue
            good.append(m)
        return good

    def high_watermarks(self) -> dict[int, int]:
        marks: dict[int, int] = {}
        for p in self.partitions:
            try:
                _, high = self._marks.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=5
                )
            except KafkaException:
                continue
            marks[p] = high
        return marks

    def close(self) -> None:
        self.consumer.close()
        self._marks.close()


def rebuild(
    settings: Settings,
    options: RebuildOptions | None = None,
    *,
    projection: Callable[[str], ProjectionLike] | None = None,
    decode: Decode | None = None,
    progress: Callable[[RebuildProgress], None] | None = None,
    now: datetime | None = None,
) -> RebuildReport:
    """Replay the topic into a fresh schema and swap it in for ``settings.postgres.schema``."""
    options = options or RebuildOptions()
    schema = settings.postgres.schema
    tag = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    new, old = f"{schema}_rebuild_{tag}", f"{schema}_old_{tag}"
    if len(old) > 63 or len(new) > 63:
        raise RebuildError(f"schema name {schema!r} too long to rebuild beside (63 bytes max)")
    started = time.monotonic()
    conn = connect(settings.postgres.dsn, autocommit=True)
    if _schema_exists(conn, new):
        conn.close()
        # Not ours to drop: another rebuild started in the same second.
        raise RebuildError(f"schema {new} already exists (a rebuild in progress?)")
    swapped = False
    try:
        apply_migrations(conn, new, projection_migrations())
        writer = BatchWriter(
            schema=new,
            topic=settings.kafka.topic,
            projection=(projection or _default_projection)(new),
            decode=decode or default_decode(),
        )
        replay = _Replay(settings, options, tag)
        run = _Run(conn, writer, replay, options, progress, schema)
        try:
            with run.runtime, writer.planning_worker(options.runtime):
                run.catch_up()
                offsets = run.swap(new, old)
            swapped = True
        finally:
            replay.close()
        had_live = offsets is not None
        dropped = False
        if had_live and options.drop_old:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(old)))
            dropped = True
        return RebuildReport(
            schema=schema,
            old_schema=old if had_live and not dropped else None,
            dropped_old=dropped,
            events=run.events,
            dead_letters=run.dead_letters,
            seconds=time.monotonic() - started,
            offsets=run.stored_offsets(),
        )
    except psycopg.OperationalError as e:
        if swapped:
            raise DatabaseUnavailable(f"rebuild swapped in, then failed: {first_line(e)}") from e
        _abandon(settings, new)
        raise DatabaseUnavailable(
            f"rebuild failed, live projection untouched: {first_line(e)}"
        ) from e
    except BaseException:
        if not swapped:
            _abandon(settings, new)
        raise
    finally:
        conn.close()


def _abandon(settings: Settings, new: str) -> None:
    """A failed rebuild leaves no half-built schema behind (best effort)."""
    try:
        with connect(settings.postgres.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(new)))
    except (psycopg.Error, DatabaseUnavailable) as e:
        log.warning("could not drop the unfinished schema %s: %s", new, e)


class _Run:
    """The state of one rebuild between its two phases."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        writer: BatchWriter,
        replay: _Replay,
        options: RebuildOptions,
        progress: Callable[[RebuildProgress], None] | None,
        live_schema: str,
    ) -> None:
        self.conn = conn
        self.writer = writer
        self.replay = replay
        self.options = options
        self.progress = progress
        self.live_schema = live_schema
        self.events = 0
        self.dead_letters = 0
        self._tick_at = time.monotonic()
        self._tick_events = 0
        self.runtime = ProjectorRuntime(options.runtime)

    def live_offsets(self) -> dict[int, int] | None:
        """The live projection's stored offsets; None when there is no live projection."""
        if not _table_exists(self.conn, self.live_schema, OFFSETS_TABLE):
            return None
        return load_offsets(self.conn, self.live_schema, self.replay.topic)

    def behind(self, targets: dict[int, int]) -> int:
        return sum(max(0, t - self.replay.seen.get(p, 0)) for p, t in targets.items())

    def _apply(self, messages: list[Message], limits: dict[int, int] | None = None) -> None:
        replay = self.replay
        keep: list[Message] = []
        for m in messages:
            p, o = m.partition(), m.offset()
            assert p is not None and o is not None
            replay.seen[p] = max(replay.seen.get(p, 0), o + 1)
            position = replay.positions.get(p)
            if position is not None and o < position:
                continue
            if limits is not None and o >= limits.get(p, 0):
                continue  # past the live projection: not part of this swap
            keep.append(m)
        if not keep:
            return
        result = self.writer.write(self.conn, keep, replay.positions)
        if result.conflicts:
            raise RebuildError(
                f"offsets of the rebuild schema moved under it (partitions "
                f"{sorted(result.conflicts)}): is another rebuild writing into it?"
            )
        replay.positions.update(result.committed)
        self.events += result.events
        self.dead_letters += result.dead_letters
        self.runtime.between_batches()

    def _report(self, phase: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (
            not force and now - self._tick_at < self.options.progress_every
        ):
            return
        rate = (self.events - self._tick_events) / max(now - self._tick_at, 1e-6)
        marks = self.replay.high_watermarks()
        lag = self.behind(marks)
        self._tick_at, self._tick_events = now, self.events
        self.progress(
            RebuildProgress(
                phase=phase,
                events=self.events,
                events_per_s=rate,
                lag=lag,
                eta_s=lag / rate if rate > 0 else None,
            )
        )

    def catch_up(self) -> None:
        """Replay at least what the topic held at the start, and up to near the live offsets."""
        start = self.replay.high_watermarks()
        targets_at = 0.0
        targets: dict[int, int] = {}
        idle_since = time.monotonic()
        while True:
            now = time.monotonic()
            if now - targets_at > 0.5:
                live = self.live_offsets() or {}
                targets = {p: max(start.get(p, 0), live.get(p, 0)) for p in start.keys() | live}
                targets_at = now
            if self.behind(targets) <= self.options.catch_up_lag:
                return
            messages = self.replay.batch(0.5)
            if messages:
                idle_since = now
                self._apply(messages)
            elif now - idle_since > self.options.stall_timeout_s:
                raise RebuildError(
                    f"no message from the topic for {self.options.stall_timeout_s:.0f}s "
                    f"while {self.behind(targets)} events are still to replay"
                )
            self._report("replay")

    def swap(self, new: str, old: str) -> dict[int, int] | None:
        """Finish under the live offsets' lock and rename; returns the live offsets (or None)."""
        conn, replay = self.conn, self.replay
        with conn.transaction():
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{int(self.options.lock_timeout_s * 1000)}ms")
                )
            )
            live_exists = _table_exists(conn, self.live_schema, OFFSETS_TABLE)
            live: dict[int, int] | None = None
            if live_exists:
                # EXCLUSIVE: readers (status, queries) go on; the live projector's
                # next offset move, the first statement of its batch, waits.
                conn.execute(
                    sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                        sql.Identifier(self.live_schema, OFFSETS_TABLE)
                    )
                )
                live = load_offsets(conn, self.live_schema, replay.topic)
                self._finish(live)
            else:
                self._finish(replay.high_watermarks())
            self._store_at_least(new, live or {})
            if live_exists and _table_exists(conn, self.live_schema, OWNER_TABLE):
                # The live projector goes on in the new schema: it must find
                # its own group there (its batches check it), and a take-over
                # waits for the swap rather than land in the schema renamed away.
                copy_owner(conn, self.live_schema, new)
            if _schema_exists(conn, self.live_schema):
                conn.execute(
                    sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                        sql.Identifier(self.live_schema), sql.Identifier(old)
                    )
                )
            conn.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    sql.Identifier(new), sql.Identifier(self.live_schema)
                )
            )
        self._report("swap", force=True)
        return live

    def _finish(self, limits: dict[int, int]) -> None:
        """Apply every message below ``limits`` (partition -> offset) not applied yet."""
        replay = self.replay
        deadline = time.monotonic() + self.options.stall_timeout_s
        while self.behind(limits) > 0:
            # A partition whose consumer position reached the limit is done even
            # if the last offsets below it held no message (a gap in the log).
            positions = replay.consumer.position([TopicPartition(replay.topic, p) for p in limits])
            for tp in positions:
                if tp.offset >= 0:
                    replay.seen[tp.partition] = max(replay.seen.get(tp.partition, 0), tp.offset)
            if self.behind(limits) <= 0:
                break
            messages = replay.batch(0.2)
            if messages:
                deadline = time.monotonic() + self.options.stall_timeout_s
                self._apply(messages, limits)
            elif time.monotonic() > deadline:
                raise RebuildError(
                    f"the topic stopped delivering {self.behind(limits)} events the live "
                    "projection has; rebuild abandoned"
                )
            self._report("swap")

    def _store_at_least(self, schema: str, offsets: dict[int, int]) -> None:
        """Raise the new schema's offsets to the live ones (never lower them)."""
        if not offsets:
            return
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {} AS o (topic, partition, next_offset) "
                "SELECT %s, p, n FROM unnest(%s::int[], %s::bigint[]) AS m(p, n) "
                "ON CONFLICT (topic, partition) DO UPDATE "
                "SET next_offset = greatest(o.next_offset, excluded.next_offset)"
            ).format(sql.Identifier(schema, OFFSETS_TABLE)),
            (self.replay.topic, list(offsets), list(offsets.values())),
        )

    def stored_offsets(self) -> dict[int, int]:
        return load_offsets(self.conn, self.live_schema, self.replay.topic)
