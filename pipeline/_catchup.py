"""Run the projector until the projection has caught up with the topic as it is now.

The demo and replay commands run the projector in-process for a moment, so that
the operator's next command (``factflow lineage stats ...``) sees the run. The
end of the topic is taken once, at the start (after the recorder flushed its
events): "caught up" means the projection's stored position (``consumer_offsets``,
written in the same transaction as the rows) reached it on every partition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from factflow_lineage.config import Settings
from factflow_lineage.consumer import Projector, ProjectorConfig, load_offsets
from factflow_lineage.db import connect
from factflow_lineage.errors import BrokerUnavailable, LineageError
from factflow_lineage.provisioning import KAFKA_LOGGER

_POLL = 0.05


@dataclass(frozen=True, kw_only=True)
class CatchUp:
    """How far the projection had to go and how long it took."""

    events: int
    seconds: float


class ProjectorBehind(LineageError):
    """The projector did not reach the end of the topic in time."""


def topic_end(settings: Settings, *, timeout: float = 10.0) -> dict[int, int]:
    """The end offset (high watermark) of every partition of the lineage topic."""
    kafka = settings.kafka
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap,
        "socket.timeout.ms": 5000,
        "logger": KAFKA_LOGGER,
    }
    admin = AdminClient(conf)
    try:
        metadata = admin.list_topics(kafka.topic, timeout=timeout)
        topic = metadata.topics.get(kafka.topic)
        if topic is None or topic.error is not None:
            raise BrokerUnavailable(
                f"topic {kafka.topic!r} does not exist on {kafka.bootstrap}: run `factflow init`"
            )
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(kafka.topic, p): latest for p in topic.partitions}
        futures = admin.list_offsets(request, request_timeout=timeout)
        return {tp.partition: f.result().offset for tp, f in futures.items()}
    except KafkaException as e:
        raise BrokerUnavailable(f"Kafka at {kafka.bootstrap} does not answer: {e}") from e


def catch_up(
    settings: Settings,
    *,
    timeout: float = 60.0,
    config: ProjectorConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CatchUp:
    """Run the projector in a thread until the projection reached today's end of the topic.

    ``progress(done, total)`` is called as events get projected. Raises
    ``ProjectorBehind`` after ``timeout`` seconds, and whatever the projector
    raised (``BrokerUnavailable``, ``DatabaseUnavailable``) if it stopped.
    """
    began = time.monotonic()
    end = {p: o for p, o in topic_end(settings).items() if o > 0}
    pg = settings.postgres
    with connect(pg.dsn, schema=pg.schema, autocommit=True) as conn:

        def behind() -> int:
            stored = load_offsets(conn, pg.schema, settings.kafka.topic, end)
            return sum(max(0, o - stored.get(p, 0)) for p, o in end.items())

        left = behind()
        if left == 0:
            return CatchUp(events=0, seconds=time.monotonic() - began)
        start_left = left
        stop = threading.Event()
        failure: list[BaseException] = []
        projector = Projector(settings, config)

        def run() -> None:
            try:
                projector.run(stop)
            except BaseException as e:  # handed to the caller's thread below
                failure.append(e)

        thread = threading.Thread(target=run, name="factflow-catch-up", daemon=True)
        thread.start()
        try:
            while left > 0:
                if failure:
                    raise failure[0]
                if not thread.is_alive():
                    raise ProjectorBehind("the projector stopped before it caught up")
                if time.monotonic() - began > timeout:
                    raise ProjectorBehind(
                        f"the projector did not catch up within {timeout:.0f} s "
                        f"({left} of {start_left} events still to project)"
                    )
                time.sleep(_POLL)
                left = behind()
                if progress is not None:
                    progress(start_left - left, start_left)
        finally:
            stop.set()
            thread.join(timeout=30)
        if failure:
            raise failure[0]
    return CatchUp(events=start_left, seconds=time.monotonic() - began)
