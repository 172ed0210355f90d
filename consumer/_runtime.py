"""The interpreter settings a projector runs under: garbage collection and thread switching.

(And whether it decodes in a worker process: ``planning_process``, see _offload.)

Both are process wide, so ``ProjectorRuntime`` changes them when the first
projector or rebuild of the process starts and puts them back when the last
one ends: a projector run inside a larger program (the tests run several in
threads) leaves the interpreter as it found it.

Garbage collection. A batch is tens of thousands of decoded events, a few
dicts and tuples each, alive from decoding to commit. CPython's collector runs
every 700 container allocations and, as those objects survive, ever more often
over the older generations too, walking the whole batch again and again and
freeing nothing: the events form no cycles. On the benchmark's stream that was
half the projector's client CPU (decode + plan: 14.1 us per event with
automatic collection, 7.4 us without). So automatic collection is off and
``between_batches`` collects in full every ``gc_interval`` seconds, for what
cycles there are (exceptions with their tracebacks, mostly).

Thread switching. The write of batch N runs in a thread that spends its time
waiting for PostgreSQL, while the main thread decodes batch N+1 holding the
GIL. Each reply to one of the write's ~15 statements waited for the main
thread to let go, up to the default switch interval of 5 ms each. At 0.5 ms,
benchmarks/projector.py went from 51.5k-52.5k to 55.1k-57.2k events/s and
the freshness p50 at 15k events/s from ~600 to ~300 ms (same runs, alternated).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """None leaves the interpreter's own setting alone."""

    # Seconds between full garbage collections.
    gc_interval: float | None = 30.0
    # sys.setswitchinterval while a projector runs, in seconds.
    switch_interval: float | None = 0.0005
    # Decode and plan batches in a worker process (see _offload); False: in
    # the projector's own process, as a projector inside a larger program may prefer.
    planning_process: bool = True


DEFAULT_RUNTIME = RuntimeSettings()


class _Shared:
    """The process-wide state: how many runtimes are in, and what was there before."""

    lock = threading.Lock()
    users = 0
    gc_was_enabled = True
    switch_was: float | None = None


class ProjectorRuntime:
    """``with ProjectorRuntime(settings) as rt: ... rt.between_batches()``."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.collections = 0
        self._last = time.monotonic()

    def __enter__(self) -> ProjectorRuntime:
        s = self.settings
        with _Shared.lock:
            if _Shared.users == 0:
                # The first one in sets both, and remembers what to put back;
                # later ones find them set (the settings are the same in practice).
                _Shared.gc_was_enabled = gc.isenabled()
                _Shared.switch_was = sys.getswitchinterval()
                if s.gc_interval is not None:
                    gc.disable()
                if s.switch_interval is not None:
                    sys.setswitchinterval(s.switch_interval)
            _Shared.users += 1
        self._last = time.monotonic()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _Shared.lock:
            _Shared.users -= 1
            if _Shared.users == 0:
                if _Shared.gc_was_enabled:
                    gc.enable()
                if _Shared.switch_was is not None:
                    sys.setswitchinterval(_Shared.switch_was)

    def between_batches(self) -> None:
        """Collect in full if ``gc_interval`` seconds have passed since the last time."""
        interval = self.settings.gc_interval
        if interval is None:
            return
        now = time.monotonic()
        if now - self._last >= interval:
            gc.collect()
            self.collections += 1
            self._last = time.monotonic()
