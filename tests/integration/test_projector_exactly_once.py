"""Exactly-once effect under kill -9.

The projector runs as a child process over a topic of realistic events (plus a
few poison messages), is SIGKILLed at random moments several times and
restarted each time; the final tables (dead letters and offsets included) must
equal those of an uninterrupted run into another schema.

Each restart joins a fresh consumer group: a SIGKILLed member keeps its
partitions until the broker's session timeout expires (45 s by default under
KIP-848), and since positions live in PostgreSQL the group is irrelevant to
where a projector starts. Each restart therefore takes the schema over
(``--take-over``), as an operator replacing a dead projector's group does.
The 200,000-event variant is marked slow.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from test_projector_support import (
    ProjectorProcess,
    assert_same_tables,
    drop_schema,
    migrate,
    produce,
    realistic_events,
    reference_projection,
    stored_total,
    wait_projected,
)

from factflow_lineage.config import Settings


@pytest.mark.parametrize(
    ("approx", "kills", "seed"),
    [
        pytest.param(20_000, 4, 41, id="20k-events"),
        pytest.param(200_000, 10, 42, id="200k-events", marks=pytest.mark.slow),
    ],
)
def test_kill_9_at_random_moments_neither_loses_nor_doubles_anything(
    settings: Settings, group_id: str, tmp_path: Path, approx: int, kills: int, seed: int
) -> None:
    rng = random.Random(seed)
    events = realistic_events(approx, seed=seed)
    poison = {rng.randrange(len(events)): f"poison {i}".encode() for i in range(5)}
    messages = produce(settings.kafka.bootstrap, settings.kafka.topic, events, poison=poison)
    pg, topic = settings.postgres, settings.kafka.topic
    migrate(pg.dsn, pg.schema)

    kill_points: list[int] = []
    for run in range(kills):
        before = stored_total(pg.dsn, pg.schema, topic)
        proc = ProjectorProcess(
            settings,
            f"{group_id}-{run}",
            tmp_path,
            f"run{run}",
            "--take-over",
            "--batch-max",
            # Never one batch for the whole topic: kills must land mid-stream
            # (the first run in small batches: 20,000 events take it well under
            # a second, and at least one kill must come before the end).
            str(
                approx // 100
                if run == 0
                else rng.choice([approx // 100, approx // 20, approx // 5])
            ),
        )
        try:
            # Kill once it has made progress (it is then mid-stream), after a
            # random extra moment so that kills land inside transactions too.
            deadline = time.monotonic() + 90
            while stored_total(pg.dsn, pg.schema, topic) <= before:
                assert proc.alive(), proc.log()
                assert time.monotonic() < deadline, proc.log()
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.02 if run == 0 else 0.25))
            proc.kill()
        finally:
            proc.ensure_stopped()
        kill_points.append(stored_total(pg.dsn, pg.schema, topic))
        if kill_points[-1] >= messages:
            break
    assert kill_points[0] < messages, "the first kill came after the end: nothing was tested"

    last = ProjectorProcess(settings, f"{group_id}-last", tmp_path, "last", "--take-over")
    try:
        wait_projected(pg.dsn, pg.schema, topic, messages, timeout=600)
        last.wait_ready()
        assert last.terminate() == 0, last.log()
    finally:
        last.ensure_stopped()

    reference = f"{pg.schema}_ref"
    try:
        reference_projection(settings, reference, messages, f"{group_id}-ref")
        tables = assert_same_tables(pg.dsn, pg.schema, reference)
        assert tables["dead_letters"][0] == len(poison)
    finally:
        drop_schema(pg.dsn, reference)
