"""The broker goes away for a minute while the pipeline keeps running.

Needs a broker of its own to stop and start: the ``private_kafka`` fixture
(tests/conftest.py), a separate instance from scripts/stack with its own state
directory and ports.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from test_producer_support import consume, recorder

from factflow_lineage.provisioning import KAFKA_LOGGER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = float(os.environ.get("FACTFLOW_TEST_OUTAGE_S", "60"))
RATE = 2000  # invocations per second: 4000 events per second


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class Pipeline(threading.Thread):
    """Records invocations at a steady rate and remembers how long each call took."""

    def __init__(self, rec: Any) -> None:
        super().__init__(daemon=True)
        self.rec = rec
        self.ids: list[bytes] = []
        self.worst = 0.0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            run = self.rec.execution(pipeline="outage")
            next_tick = time.monotonic()
            i = 0
            while not self.stop.is_set():
                start = time.perf_counter()
                with self.rec.invocation(run, "r", "a", input=str(i)) as inv:
                    inv.output(b"x")
                self.worst = max(self.worst, time.perf_counter() - start)
                self.ids.append(inv.id.bytes)
                i += 1
                next_tick += 1 / RATE
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            run.complete()
        except BaseException as e:  # surfaced by the test
            self.error = e


def new_private_topic(bootstrap: str) -> str:
    topic = f"test.outage.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": KAFKA_LOGGER})
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(timeout=30)
    return topic


def test_an_outage_loses_nothing_blocks_nothing_and_memory_stays_bounded(
    private_kafka: Any, tmp_path: Path
) -> None:
    bootstrap = private_kafka.bootstrap
    topic = new_private_topic(bootstrap)

    queue_max = 2000
    rec = recorder(
        bootstrap,
        topic,
        tmp_path,
        queue_max_messages=queue_max,
        segment_bytes=4 * 1024 * 1024,
        close_timeout=1,
    )
    pipeline = Pipeline(rec)
    pipeline.start()
    time.sleep(3)
    assert rec.stats().delivered > 0

    private_kafka.stop()
    rss_at_start = rss_bytes()
    peak_backlog = 0
    peak_rss = rss_at_start
    outage_end = time.monotonic() + OUTAGE_S
    while time.monotonic() < outage_end:
        time.sleep(1)
        stats = rec.stats()
        assert stats.queue_depth <= queue_max + 10
        peak_backlog = max(peak_backlog, stats.backlog)
        peak_rss = max(peak_rss, rss_bytes())
    spooled_during_outage = rec.stats().backlog
    private_kafka.start()
    time.sleep(3)
    pipeline.stop.set()
    pipeline.join(30)
    assert pipeline.error is None, repr(pipeline.error)

    left = rec.flush(120)
    stats = rec.stats()
    rec.close()
    assert left == 0, stats
    assert stats.dropped == 0 and stats.errors == 0, stats
    assert stats.delivered == stats.emitted
    # Past librdkafka's bounded queue the events waited on disk, not in memory.
    assert spooled_during_outage > RATE * OUTAGE_S, stats
    assert peak_rss - rss_at_start < 64 * 1024 * 1024, (peak_rss - rss_at_start) / 2**20
    # A stall detector, not a latency figure (benchmarks/producer.py has those):
    # no call waits for the broker, so none comes near a second on any machine.
    assert pipeline.worst < 1.0, f"a call took {pipeline.worst * 1000:.1f} ms during the outage"

    expected = set(pipeline.ids)

    def all_there(events: list[Any]) -> bool:
        started = {e.payload["lineage_id"] for e in events if e.kind == "INVOCATION_STARTED"}
        return expected <= started

    events = consume(bootstrap, topic, until=all_there, timeout=120)
    started = {e.payload["lineage_id"] for e in events if e.kind == "INVOCATION_STARTED"}
    assert not expected - started, f"{len(expected - started)} of {len(expected)} lost"
    assert peak_backlog > 0


def test_a_broker_crash_mid_run_loses_nothing(private_kafka: Any, tmp_path: Path) -> None:
    # SIGKILL, not a clean shutdown: in-flight requests die unanswered, and the
    # idempotent producer must sort out its sequence numbers with the new broker.
    bootstrap = private_kafka.bootstrap
    topic = new_private_topic(bootstrap)
    rec = recorder(bootstrap, topic, tmp_path, queue_max_messages=2000, close_timeout=1)
    pipeline = Pipeline(rec)
    pipeline.start()
    time.sleep(2)
    private_kafka.kill()
    time.sleep(10)
    private_kafka.start()
    time.sleep(2)
    pipeline.stop.set()
    pipeline.join(30)
    assert pipeline.error is None, repr(pipeline.error)
    left = rec.flush(120)
    stats = rec.stats()
    rec.close()
    assert left == 0 and stats.dropped == 0 and stats.errors == 0, stats
    assert pipeline.worst < 1.0, f"a call took {pipeline.worst * 1000:.1f} ms"
    expected = set(pipeline.ids)

    def all_there(events: list[Any]) -> bool:
        started = {e.payload["lineage_id"] for e in events if e.kind == "INVOCATION_STARTED"}
        return expected <= started

    events = consume(bootstrap, topic, until=all_there, timeout=120)
    started = {e.payload["lineage_id"] for e in events if e.kind == "INVOCATION_STARTED"}
    assert not expected - started, f"{len(expected - started)} of {len(expected)} lost"
