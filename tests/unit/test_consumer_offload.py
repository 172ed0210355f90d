"""Decoding and planning in a worker process: the same batch as in-process, and survival."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

from factflow_lineage.consumer._decoder import decode_messages, default_decode
from factflow_lineage.consumer._offload import PlanningWorker
from factflow_lineage.consumer._planner import plan
from factflow_lineage.consumer._projection import Projection
from factflow_lineage.consumer._runtime import DEFAULT_RUNTIME
from factflow_lineage.consumer._writer import BatchWriter
from factflow_lineage.schemas import encode
from tests.support.events import RunShape, realistic_run
from tests.support.messages import FakeMessage


def _messages() -> list[FakeMessage]:
    events = realistic_run(random.Random(5), RunShape(executions=1, roots=3))
    values: list[bytes | None] = [encode(e) for e in events]
    values[3] = b"not avro"
    values[7] = None  # a tombstone
    return [FakeMessage(p=i % 2, o=i // 2, v=v) for i, v in enumerate(values)]


def test_the_worker_plans_what_this_process_would() -> None:
    messages = _messages()
    here = decode_messages(messages, "t", default_decode())
    with PlanningWorker(DEFAULT_RUNTIME) as worker:
        done = worker.decode_and_plan([m.value() for m in messages])
    assert done is not None
    failures, planned = done
    assert [i for i, _ in failures] == [3, 7]
    assert [reason for _, reason in failures] == [d.error for d in here.dead_letters]
    assert planned == plan(here.events)


def test_a_batch_planned_by_the_worker_is_the_batch_planned_here() -> None:
    messages = _messages()
    writer = BatchWriter(schema="s", topic="t", projection=Projection("s"), decode=default_decode())
    here = writer.decode(messages)
    with writer.planning_worker():
        there = writer.decode(messages)
    assert there.events == [] and here.events  # the events stayed in the worker
    assert there.plan == here.plan
    assert there.sources == here.sources and there.ranges == here.ranges
    assert there.dead_letters == here.dead_letters


def test_a_dead_worker_costs_one_batch_decoded_here_then_a_new_one_plans() -> None:
    values = [m.value() for m in _messages()]
    with PlanningWorker(DEFAULT_RUNTIME) as worker:
        assert worker.decode_and_plan(values) is not None
        assert worker._pool is not None
        worker._pool.submit(os._exit, 9)  # the worker process dies, as if killed
        assert worker.decode_and_plan(values) is None
        assert worker.restarts == 1
        assert worker.decode_and_plan(values) is not None


def test_no_worker_for_a_decoder_of_its_own() -> None:
    writer = BatchWriter(
        schema="s", topic="t", projection=Projection("s"), decode=lambda raw: {"raw": raw}
    )
    with writer.planning_worker():
        assert writer._worker is None


_PROJECTOR = """
import time
from factflow_lineage.consumer._offload import PlanningWorker
from factflow_lineage.consumer._runtime import DEFAULT_RUNTIME
with PlanningWorker(DEFAULT_RUNTIME) as worker:
    worker.decode_and_plan([])
    print(*worker._pool._processes, flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:\tZ") for line in status)  # a zombie is gone
    except FileNotFoundError:
        return False


def test_the_worker_goes_when_its_projector_is_killed() -> None:
    projector = subprocess.Popen([sys.executable, "-c", _PROJECTOR], stdout=subprocess.PIPE)
    try:
        assert projector.stdout is not None
        (worker,) = map(int, projector.stdout.readline().split())
        assert _alive(worker)
        projector.kill()  # SIGKILL: no shutdown, no goodbye to the worker
        projector.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker)
    finally:
        projector.kill()
        projector.wait()
        if projector.stdout is not None:
            projector.stdout.close()
