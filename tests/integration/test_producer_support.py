"""Helpers of the producer's integration tests (no tests here)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError

from factflow_lineage.producer import LineageRecorder, RecorderConfig
from factflow_lineage.provisioning import KAFKA_LOGGER
from factflow_lineage.schemas import decode


@dataclass(frozen=True)
class Received:
    """One event as it came back from the topic."""

    key: bytes
    partition: int
    offset: int
    event: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.event["event_type"])

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = self.event["payload"]
        return payload


def consume(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Received]], bool] | None = None,
    count: int | None = None,
    timeout: float = 30.0,
    idle: float = 2.0,
) -> list[Received]:
    """Read ``topic`` from the start: until ``until(events)`` holds, ``count``
    events arrived, or (with neither) nothing new came for ``idle`` seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-producer-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "logger": KAFKA_LOGGER,
        }
    )
    consumer.subscribe([topic])
    out: list[Received] = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(10_000, timeout=0.5)
            for msg in batch:
                error = msg.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    continue
                out.append(Received(msg.key(), msg.partition(), msg.offset(), decode(msg.value())))
            if batch:
                last_new = time.monotonic()
            if until is not None and until(out):
                return out
            if count is not None and len(out) >= count:
                return out
            if until is None and count is None and out and time.monotonic() - last_new > idle:
                return out
    finally:
        consumer.close()
    return out


def closed_port() -> int:
    """A local TCP port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def recorder(bootstrap: str, topic: str, spool_dir: Path | None, **kwargs: Any) -> LineageRecorder:
    return LineageRecorder(
        RecorderConfig(bootstrap=bootstrap, topic=topic, spool_dir=spool_dir, **kwargs)
    )


def wait_recovered(rec: LineageRecorder, timeout: float = 60.0) -> None:
    """Until the recorder has re-sent every adopted spool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rec.stats().recovering == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"spools not recovered within {timeout}s: {rec.stats()}")


# A pipeline that records as fast as it can and prints each lineage id once the
# call that recorded it has returned; the test kills it with SIGKILL.
CHILD = r"""
import sys, uuid
from pathlib import Path
from factflow_lineage.producer import LineageRecorder, RecorderConfig

bootstrap, topic, spool_dir, execution = sys.argv[1:5]
recorder = LineageRecorder(RecorderConfig(
    bootstrap=bootstrap, topic=topic, spool_dir=Path(spool_dir),
    # A long linger keeps ~1 s of events in librdkafka's memory, unsent: only
    # the spool can save those from the kill.
    linger_ms=1000, segment_bytes=1024 * 1024, spool_max_bytes=256 * 1024 * 1024,
))
out = sys.stdout
out.write("ready\n")
out.flush()
i = 0
while True:
    with recorder.invocation(execution, "route", "adapter", input=str(i)) as inv:
        out.write(inv.id.hex + "\n")
        out.flush()
        inv.output(b"x")
    out.write("done " + inv.id.hex + "\n")
    out.flush()
    i += 1
"""
