"""A recorder inherited through fork records in the children, on the real broker.

Worker pools fork the process that made the recorder (multiprocessing's
default start method on Linux up to Python 3.13, prefork servers). The child
has none of the parent's threads (librdkafka's, the pump's): the recorder
starts again in it with a producer, pump and spool of its own, a new
producer id, and nothing of the parent's in-flight state.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_producer_support import Received, consume, wait_recovered

from factflow_lineage.config import Settings
from factflow_lineage.producer import Invocation, LineageRecorder, RecorderConfig

pytestmark = [
    pytest.mark.integration,
    # Python 3.12+ warns that forking a process with threads is risky: making
    # that safe for the recorder is what these tests are about.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

_FORK = multiprocessing.get_context("fork")

# What the pool workers use: inherited through fork, as a module-level
# recorder of a pipeline would be.
_RECORDER: LineageRecorder | None = None
# Invocations the parent started and a child ends (they carry only ids).
_OPEN: list[Invocation] = []


def _work(args: tuple[uuid.UUID, int]) -> tuple[int, str, str]:
    """One task in a worker: end the parent's invocation ``i``, record one of its own."""
    execution, i = args
    recorder = _RECORDER
    assert recorder is not None
    _OPEN[i].complete()
    with recorder.invocation(execution, "fork", "worker", input=f"task {i}") as inv:
        inv.output(b"done")
    return os.getpid(), str(inv.id), recorder.producer_id.hex()


@pytest.fixture
def recorder(settings: Settings, tmp_path: Path) -> Iterator[LineageRecorder]:
    global _RECORDER
    rec = LineageRecorder(
        RecorderConfig(
            bootstrap=settings.kafka.bootstrap,
            topic=settings.kafka.topic,
            spool_dir=tmp_path / "spool",
            # No second look at the spool directory during a test: what the
            # children deliver, they deliver themselves.
            adopt_interval_s=600,
        )
    )
    _RECORDER = rec
    try:
        yield rec
    finally:
        _RECORDER = None
        _OPEN.clear()
        rec.close(0)


def _record_in_workers(
    recorder: LineageRecorder, settings: Settings, run_pool: Callable[[list[Any]], list[Any]]
) -> None:
    tasks = 12
    with recorder.execution(pipeline="fork-pool") as run:
        _OPEN.extend(
            recorder.invocation(run, "fork", "parent", input=f"task {i}") for i in range(tasks)
        )
        # Recorded just before the fork: likely still in flight when the
        # workers are made; they must not send them again.
        for i in range(200):
            with recorder.invocation(run, "fork", "before", input=str(i)):
                pass
        results = run_pool([(run.id, i) for i in range(tasks)])
    parent_id = recorder.producer_id.hex()
    # Every worker closed its recorder as it left (delivered, directory removed).
    spool = recorder._pump.spool
    assert spool is not None and recorder.config.spool_dir is not None
    assert [p.name for p in recorder.config.spool_dir.iterdir()] == [spool.dir.name]
    recorder.close()
    assert recorder.stats().delivered == recorder.stats().emitted

    pids = {pid for pid, _, _ in results}
    producers = {pid: producer for pid, _, producer in results}
    assert len(set(producers.values())) == len(pids) and parent_id not in producers.values()
    # Each worker's events: the end of a parent invocation, a start and a
    # completion of its own, per task.
    expected = recorder.stats().emitted + 3 * tasks
    events = consume(
        settings.kafka.bootstrap,
        settings.kafka.topic,
        until=lambda got: len({r.event["event_id"] for r in got}) >= expected,
        timeout=30,
    )
    by_producer: dict[str, list[Received]] = {}
    for r in events:
        by_producer.setdefault(r.event["producer_id"].hex(), []).append(r)
    assert set(by_producer) == {parent_id, *producers.values()}
    # The parent's events once each: no child re-sent what was in flight at the fork.
    parent = by_producer[parent_id]
    assert max(Counter(r.event["event_id"] for r in parent).values()) == 1
    assert sorted(r.event["sequence"] for r in parent) == list(range(recorder.stats().emitted))
    finished = {r.payload["lineage_id"] for r in events if r.kind == "INVOCATION_COMPLETED"}
    assert {inv.id.bytes for inv in _OPEN} <= finished  # ended in the children
    for producer in producers.values():
        mine = by_producer[producer]
        # A fresh producer: its own sequence from 0, nothing of the parent's.
        assert sorted({r.event["sequence"] for r in mine}) == list(range(len(mine)))
        assert all(r.kind.startswith("INVOCATION_") for r in mine)
    lineage_ids = {uuid.UUID(lid).bytes for _, lid, _ in results}
    started = {r.payload["lineage_id"] for r in events if r.kind == "INVOCATION_STARTED"}
    assert lineage_ids <= started and lineage_ids <= finished


def test_a_fork_pool_records_in_every_worker(recorder: LineageRecorder, settings: Settings) -> None:
    def run_pool(tasks: list[Any]) -> list[Any]:
        pool = _FORK.Pool(3)
        try:
            return pool.map(_work, tasks, chunksize=1)
        finally:
            # close + join: the workers leave normally (os._exit after
            # multiprocessing's finalizers, no atexit).
            pool.close()
            pool.join()

    _record_in_workers(recorder, settings, run_pool)


def test_a_fork_process_pool_executor_records_in_every_worker(
    recorder: LineageRecorder, settings: Settings
) -> None:
    def run_pool(tasks: list[Any]) -> list[Any]:
        with concurrent.futures.ProcessPoolExecutor(3, mp_context=_FORK) as pool:
            return list(pool.map(_work, tasks))

    _record_in_workers(recorder, settings, run_pool)


def _record_and_vanish(how: str, out: int) -> None:
    """A child that records, then leaves without closing its recorder."""
    recorder = _RECORDER
    assert recorder is not None
    with recorder.invocation(uuid.uuid4(), "fork", "vanishing", input=b"x") as inv:
        pass
    os.write(out, inv.id.bytes)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(0)


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_child_that_leaves_without_closing_leaves_its_events_in_its_spool(
    recorder: LineageRecorder, settings: Settings, how: str
) -> None:
    # os._exit: no atexit, no close; SIGKILL: not even that. The child's
    # events are in its own spool directory, which the next recorder on the
    # spool directory (or `factflow spool drain`) adopts once the child is gone.
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(reader)
            _record_and_vanish(how, writer)
        finally:
            os._exit(3)
    os.close(writer)
    with os.fdopen(reader, "rb") as out:
        row = out.read()
    _, status = os.waitpid(pid, 0)
    assert len(row) == 16, f"the child recorded nothing (status {status})"
    with LineageRecorder(recorder.config) as successor:
        wait_recovered(successor)

    def both(got: list[Received]) -> bool:
        kinds = {r.kind for r in got if r.payload.get("lineage_id") == row}
        return kinds >= {"INVOCATION_STARTED", "INVOCATION_COMPLETED"}

    events = consume(settings.kafka.bootstrap, settings.kafka.topic, until=both, timeout=30)
    assert both(events)
    # The child's spool directory was re-sent and removed: only the parent's is left.
    spool = recorder._pump.spool
    assert spool is not None and recorder.config.spool_dir is not None
    assert [p.name for p in recorder.config.spool_dir.iterdir()] == [spool.dir.name]
