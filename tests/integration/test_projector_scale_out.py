"""Scale-out: three projector processes in one consumer group, with rebalances.

Two start, a third joins, one of the first two leaves (SIGTERM), while events
keep arriving: partitions move between live processes with batches in flight.
The final tables must equal those of a single uninterrupted projector, with no
deadlock and no lost or doubled update (executions and their counts are shared
by partitions that different processes own).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from test_projector_support import (
    ProjectorProcess,
    assert_same_tables,
    drop_schema,
    migrate,
    produce,
    realistic_events,
    reference_projection,
    stored_total,
)

from factflow_lineage.config import Settings


class Feeder:
    """Produces the events chunk by chunk, so that every phase has work in flight."""

    def __init__(self, settings: Settings, events: list[dict[str, object]], chunks: int) -> None:
        self.settings = settings
        size = max(1, len(events) // chunks)
        self.chunks = [events[i : i + size] for i in range(0, len(events), size)]
        self.produced = 0

    def until(self, condition: Callable[[], bool], procs: list[ProjectorProcess]) -> None:
        """Feed a chunk every 0.2 s until ``condition`` holds (or wait, once all are fed)."""
        deadline = time.monotonic() + 120
        while not condition():
            for proc in procs:
                assert proc.alive(), proc.log()
            assert time.monotonic() < deadline, "\n\n".join(p.log() for p in procs)
            if self.chunks:
                chunk = self.chunks.pop(0)
                self.produced += produce(
                    self.settings.kafka.bootstrap, self.settings.kafka.topic, chunk
                )
            time.sleep(0.2)

    def rest(self) -> None:
        remaining = [event for chunk in self.chunks for event in chunk]
        self.chunks.clear()
        self.produced += produce(
            self.settings.kafka.bootstrap, self.settings.kafka.topic, remaining
        )


def _assignments(proc: ProjectorProcess) -> int:
    """Non-empty assignments the process received so far."""
    return sum(
        1
        for line in proc.log().splitlines()
        if "assigned partitions [" in line and "assigned partitions []" not in line
    )


def test_three_processes_with_rebalances_equal_one(
    settings: Settings, group_id: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    # Six partitions: two each once all three run, uneven while two do.
    settings = replace(settings, kafka=replace(settings.kafka, topic=new_topic(6), partitions=6))
    pg, topic = settings.postgres, settings.kafka.topic
    events = realistic_events(30_000, seed=77)
    feeder = Feeder(settings, events, chunks=75)
    feeder.produced += produce(settings.kafka.bootstrap, topic, [], poison={0: b"bad", 1: b"worse"})
    migrate(pg.dsn, pg.schema)
    small = ("--batch-max", "400")  # many transactions: rebalances land between and within
    first = ProjectorProcess(settings, group_id, tmp_path, "first", *small)
    second = ProjectorProcess(settings, group_id, tmp_path, "second", *small)
    procs = [first, second]
    third: ProjectorProcess | None = None
    try:
        feeder.until(lambda: stored_total(pg.dsn, pg.schema, topic) > 2000, procs)
        third = ProjectorProcess(settings, group_id, tmp_path, "third", *small)
        procs.append(third)
        joined = third
        feeder.until(lambda: _assignments(joined) >= 1, procs)
        before = _assignments(second) + _assignments(third)
        assert first.terminate() == 0, first.log()
        procs.remove(first)
        feeder.until(lambda: _assignments(second) + _assignments(joined) > before, procs)
        feeder.rest()
        messages = feeder.produced
        feeder.until(lambda: stored_total(pg.dsn, pg.schema, topic) >= messages, procs)
        for proc in procs:
            assert proc.terminate() == 0, proc.log()
    finally:
        for proc in (first, second, *([third] if third else [])):
            proc.ensure_stopped()
    assert stored_total(pg.dsn, pg.schema, topic) == messages

    reference = f"{pg.schema}_ref"
    try:
        reference_projection(settings, reference, messages, f"{group_id}-ref")
        tables = assert_same_tables(pg.dsn, pg.schema, reference)
        assert tables["dead_letters"][0] == 2
    finally:
        drop_schema(pg.dsn, reference)
