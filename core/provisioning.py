"""``factflow init``: the lineage topic and the projection's tables, idempotently."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from .config import KafkaSettings
from .errors import BrokerUnavailable

# The topic is the source of truth (a projection is rebuilt by replaying it),
# so nothing may age out of it.
# librdkafka logs to stderr unless given a logger; ours goes through logging,
# where the CLI keeps it quiet and a service configures it.
KAFKA_LOGGER = logging.getLogger("factflow_lineage.kafka")

TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


@dataclass(frozen=True)
class TopicReport:
    """The outcome of ``ensure_topic``: created now, or found with its partitions."""

    topic: str
    created: bool
    partitions: int
    warnings: tuple[str, ...] = ()


def ensure_topic(kafka: KafkaSettings, *, timeout: float = 15.0) -> TopicReport:
    """Create the lineage topic unless it exists; report a mismatched existing one."""
    admin = AdminClient(
        {"bootstrap.servers": kafka.bootstrap, "socket.timeout.ms": 5000, "logger": KAFKA_LOGGER}
    )
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as e:
        raise BrokerUnavailable(f"Kafka at {kafka.bootstrap} does not answer: {e}") from e
    existing = metadata.topics.get(kafka.topic)
    if existing is not None and existing.error is None:
        return TopicReport(
            kafka.topic, False, len(existing.partitions), _config_warnings(admin, kafka, timeout)
        )
    new = NewTopic(kafka.topic, num_partitions=kafka.partitions, config=TOPIC_CONFIG)
    future = admin.create_topics([new], operation_timeout=timeout)[kafka.topic]
    try:
        future.result(timeout=timeout)
    except KafkaException as e:
        error = e.args[0] if e.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            # Another `init` won the race: that is the idempotent outcome too.
            return ensure_topic(kafka, timeout=timeout)
        raise BrokerUnavailable(f"cannot create topic {kafka.topic!r}: {e}") from e
    return TopicReport(kafka.topic, True, kafka.partitions)


def _config_warnings(admin: AdminClient, kafka: KafkaSettings, timeout: float) -> tuple[str, ...]:
    """An existing topic that would age events out cannot back a rebuild: say so."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, kafka.topic)
    try:
        config = admin.describe_configs([resource])[resource].result(timeout=timeout)
    except KafkaException as e:
        return (f"could not read the configuration of {kafka.topic!r}: {e}",)
    retention = config.get("retention.ms")
    if retention is not None and retention.value != "-1":
        return (
            f"topic {kafka.topic!r} has retention.ms={retention.value}: events will age out "
            "and `factflow projection rebuild` will lose them (set retention.ms=-1)",
        )
    return ()
