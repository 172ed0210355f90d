"""Decoding and planning in a worker process, off the projector's GIL.

With the merge in Python (``_fold``) and PostgreSQL doing little beyond
storing rows, the projector is bound by its Python: one core's worth at about
70k events/s, of which decoding and planning a batch take over half. Neither
needs more than the messages' values, so a worker process does both while the
projector's process consumes, folds and writes. What crosses the pipe: the
values out (pickled bytes, a memory copy), the plan back (staged rows: tuples
of bytes, str and int) with the index and reason of every message that did
not decode. Unpickling a plan costs the projector about a tenth of what
decoding and planning it would.

The worker is a pure function of its input, so nothing about exactly-once
changes: the batch's offsets, rows and dead letters are still written in one
transaction by the projector's process. A worker that dies (killed, out of
memory) costs one batch decoded in the projector's process and a new worker.
It is started with ``spawn``: forking a process that runs librdkafka's threads
is not safe.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from types import TracebackType
from typing import Any

from ._decoder import Failure, decode_values, default_decode
from ._planner import Plan, plan
from ._runtime import ProjectorRuntime, RuntimeSettings

log = logging.getLogger("factflow_lineage.consumer")

# The worker's garbage collection, as in the projector (see _runtime): entered
# when the worker starts, for its whole life.
_runtime: ProjectorRuntime | None = None


def _init_worker(settings: RuntimeSettings) -> None:
    global _runtime
    # The projector handles the signals: a Ctrl-C in its terminal reaches the
    # whole process group, and the worker must not print a traceback for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _runtime = ProjectorRuntime(settings).__enter__()
    # A projector killed with -9 never says goodbye, and the worker's own copy
    # of its task queue keeps the pipe open: it would wait for work forever.
    # It goes when its parent does.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with, args=(parent.sentinel,), name="parent-watch", daemon=True
        ).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def decode_and_plan(values: Sequence[bytes | None]) -> tuple[list[Failure], Plan | None]:
    """In the worker: decode the values and plan the events (None: planning refused them).

    A refused plan (a value the planner raises on instead of rejecting) is
    left to the projector's process, which decodes the batch again and hands
    it to the writer's handling of refused batches.
    """
    events, failures = decode_values(values, default_decode())
    planned: Plan | None
    try:
        planned = plan(events)
    except ValueError:
        planned = None
    if _runtime is not None:
        _runtime.between_batches()
    return failures, planned


class PlanningWorker:
    """``with PlanningWorker(settings) as w: w.decode_and_plan(values)``: one worker process.

    ``settings``: the projector's runtime settings; the worker collects
    garbage as they say (it has no threads to switch between).
    """

    def __init__(self, settings: RuntimeSettings) -> None:
        self._settings = replace(settings, switch_interval=None)
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def __enter__(self) -> PlanningWorker:
        self._pool = self._new_pool()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def decode_and_plan(
        self, values: Sequence[bytes | None]
    ) -> tuple[list[Failure], Plan | None] | None:
        """The worker's ``decode_and_plan``; None when it died (decode here instead)."""
        assert self._pool is not None, "use PlanningWorker as a context manager"
        try:
            return self._pool.submit(decode_and_plan, values).result()
        except BrokenProcessPool as e:
            log.warning("the planning worker died (%s): this batch is decoded here", e)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            self.restarts += 1
            return None

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._settings,),
        )
        # Started now (spawn imports the package: a fraction of a second), not
        # when the first batch is waiting for it.
        pool.submit(_nothing)
        return pool


def _nothing() -> Any:
    return None
