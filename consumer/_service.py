"""The projector service: a group consumer, a PostgreSQL connection, a stop event.

``Projector.run(stop)`` projects until ``stop`` is set, then finishes the batch
in hand (its transaction commits), closes the consumer (leaving the group
cleanly) and the connection, in ``finally``. If the loop fails instead, the open
transaction rolls back: a failing projector commits nothing it did not finish.
``run_until_signalled`` wires SIGTERM and SIGINT to the stop event.

Before it consumes anything, ``run`` claims the projection schema for its
consumer group (``_owner``): a projector of another group refuses to start,
unless told to take the schema over. The group defaults to one derived from
topic and schema, so that two projections never share a group by accident.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

import psycopg
from confluent_kafka import Consumer, KafkaException

from factflow_lineage.config import Settings
from factflow_lineage.db import connect, first_line
from factflow_lineage.errors import BrokerUnavailable, ConfigError, DatabaseUnavailable

from ._decoder import Decode, default_decode
from ._loop import LoopOptions, ProjectorLoop, ProjectorStats
from ._owner import check_group_id, claim, default_group
from ._runtime import DEFAULT_RUNTIME, RuntimeSettings
from ._writer import BatchWriter, ProjectionLike

log = logging.getLogger("factflow_lineage.consumer")

KAFKA_LOGGER = "factflow_lineage.consumer.librdkafka"


@dataclass(frozen=True, kw_only=True)
class ProjectorConfig:
    """How the projector consumes; where it consumes from is in ``Settings``."""

    # None: ``factflow-projector.<topic>.<schema>.<digest>`` (``_owner.default_group``).
    group_id: str | None = None
    # Record this group as the schema's owner even if another one owns it (the
    # old owner stops at its next batch). Without it, another owner is an error.
    take_over: bool = False
    # KIP-848 ("consumer"): the broker assigns, incrementally; joins in a fraction
    # of the classic protocol's time. "classic" uses cooperative-sticky.
    group_protocol: Literal["consumer", "classic"] = "consumer"
    # Most events per transaction. Under load larger batches coalesce more (a
    # start and its completion become one row) and amortise the set-based
    # statements: benchmarks/projector.py measured 30k events/s at 10k, 42k
    # from 40k up. Light traffic makes small batches anyway (see _loop).
    batch_max: int = 50_000
    poll_timeout: float = 0.2
    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    commit_to_kafka: bool = True
    # Garbage collection between batches and a short thread switch interval:
    # together a quarter of the throughput (see _runtime).
    runtime: RuntimeSettings = DEFAULT_RUNTIME

    def __post_init__(self) -> None:
        if self.group_id is not None:
            check_group_id(self.group_id)

    def group_for(self, topic: str, schema: str) -> str:
        """The consumer group of a projector of ``topic`` into ``schema``."""
        return self.group_id if self.group_id is not None else default_group(topic, schema)

    def loop_options(self) -> LoopOptions:
        return LoopOptions(
            batch_max=self.batch_max,
            poll_timeout=self.poll_timeout,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
            commit_to_kafka=self.commit_to_kafka,
            runtime=self.runtime,
        )


def consumer_config(
    bootstrap: str, config: ProjectorConfig, group: str | None = None
) -> dict[str, Any]:
    """librdkafka settings of the projector's group consumer (of ``group``, or the config's)."""
    group = group if group is not None else config.group_id
    if group is None:
        raise ConfigError("no consumer group: give one, or use ProjectorConfig.group_for")
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": check_group_id(group),
        "group.protocol": config.group_protocol,
        # PostgreSQL holds the position. Kafka's committed offsets are written
        # only by our explicit advisory commit, after the PostgreSQL commit.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Large fetches: the projector is throughput-bound, messages are small.
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
        "fetch.wait.max.ms": 100,
        "reconnect.backoff.ms": 200,
        "reconnect.backoff.max.ms": 5000,
        "client.id": f"factflow-projector-{group}",
        # librdkafka's own log lines go through Python logging (served by
        # consume/poll), not straight to stderr: an outage is reported once by
        # the loop, not ten times a second by every reconnect attempt.
        "logger": logging.getLogger(KAFKA_LOGGER),
        "log.connection.close": False,
    }
    if config.group_protocol == "classic":
        conf["partition.assignment.strategy"] = "cooperative-sticky"
        conf["session.timeout.ms"] = 15000
        conf["heartbeat.interval.ms"] = 1000
    return conf


def _default_projection(schema: str) -> ProjectionLike:
    from ._projection import Projection

    projection: ProjectionLike = Projection(schema)
    return projection


class Projector:
    """The long-running projector from the lineage topic into the projection schema."""

    def __init__(
        self,
        settings: Settings,
        config: ProjectorConfig | None = None,
        *,
        projection: ProjectionLike | None = None,
        decode: Decode | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or ProjectorConfig()
        self.group = self.config.group_for(settings.kafka.topic, settings.postgres.schema)
        self._projection = projection
        self._decode = decode
        self._loop: ProjectorLoop | None = None

    @property
    def stats(self) -> ProjectorStats | None:
        """Totals of the current or last run (None before ``run``)."""
        return None if self._loop is None else self._loop.stats

    def _connect(self) -> psycopg.Connection[Any]:
        pg = self.settings.postgres
        conn = connect(pg.dsn, schema=pg.schema, autocommit=True)
        # Commits don't wait for their WAL flush (one flush saved per batch).
        # Safe here: a batch's offsets are committed in the same transaction
        # as its rows and dead letters, so a PostgreSQL crash that loses the
        # last commits loses them together; the stored offsets then point
        # before the lost batches and Kafka replays them. The advisory Kafka
        # commit may run ahead of what survived, but positions are only ever
        # read from PostgreSQL (see _loop).
        try:
            conn.execute("SET synchronous_commit = off")
        except BaseException:
            conn.close()
            raise
        return conn

    def _claim(self) -> None:
        """Own the schema for this group, or refuse (``ProjectionOwned``): see ``_owner``."""
        kafka, pg = self.settings.kafka, self.settings.postgres
        try:
            with connect(pg.dsn, schema=pg.schema, autocommit=True) as conn:
                owner, previous = claim(
                    conn, pg.schema, kafka.topic, self.group, take_over=self.config.take_over
                )
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(first_line(e)) from e
        if previous is not None:
            log.warning(
                "took schema %s over from consumer group %s (topic %s, owner since %s): "
                "its projectors stop at their next batch",
                pg.schema,
                previous.group_id,
                previous.topic,
                previous.claimed_at.isoformat(timespec="seconds"),
            )
        log.info(
            "schema %s is owned by consumer group %s since %s",
            pg.schema,
            owner.group_id,
            owner.claimed_at.isoformat(timespec="seconds"),
        )

    def run(self, stop: threading.Event) -> None:
        """Project until ``stop`` is set.

        Raises ``ProjectionOwned`` when another group owns the schema (at start,
        or taken over since), BrokerUnavailable on a fatal Kafka error.
        """
        kafka, pg = self.settings.kafka, self.settings.postgres
        self._claim()
        writer = BatchWriter(
            schema=pg.schema,
            topic=kafka.topic,
            projection=self._projection or _default_projection(pg.schema),
            decode=self._decode or default_decode(),
            group=self.group,
        )
        loop_box: list[ProjectorLoop] = []
        conf = consumer_config(kafka.bootstrap, self.config, self.group)
        conf["error_cb"] = lambda error: loop_box[0].on_error(error) if loop_box else None
        try:
            consumer = Consumer(conf)
        except KafkaException as e:
            raise BrokerUnavailable(f"cannot create the Kafka consumer: {e}") from e
        loop = ProjectorLoop(
            consumer=consumer,
            topic=kafka.topic,
            writer=writer,
            connect=self._connect,
            options=self.config.loop_options(),
        )
        loop_box.append(loop)
        self._loop = loop
        log.info(
            "projector starting: topic %s, schema %s, group %s (%s protocol)",
            kafka.topic,
            pg.schema,
            self.group,
            self.config.group_protocol,
        )
        try:
            consumer.subscribe(
                [kafka.topic],
                on_assign=loop.on_assign,
                on_revoke=loop.on_revoke,
                on_lost=loop.on_lost,
            )
            loop.run(stop)
        finally:
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as e:
                log.warning("closing the Kafka consumer: %s", e)
        s = loop.stats
        log.info(
            "projector stopped: %d events, %d dead letters, %d transactions",
            s.events,
            s.dead_letters,
            s.transactions,
        )


@contextmanager
def stop_on_signals(
    stop: threading.Event, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
) -> Iterator[threading.Event]:
    """Within the block, the given signals set ``stop`` instead of killing the process.

    A second signal while stopping aborts at once (KeyboardInterrupt): the batch
    in hand is rolled back, which is safe, only slower to catch up on restart.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("received %s again: aborting the batch in hand", name)
            raise KeyboardInterrupt(name)
        log.info("received %s: finishing the batch in hand, then stopping", name)
        stop.set()

    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for sig in signals:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_until_signalled(projector: Projector) -> None:
    """Run ``projector`` in this (main) thread until SIGTERM or SIGINT."""
    with stop_on_signals(threading.Event()) as stop:
        projector.run(stop)
