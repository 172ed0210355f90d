"""Python's cyclic garbage collector on the projector's schedule, not on every allocation.

A batch is tens of thousands of decoded events, a few dicts and tuples each,
alive from decoding to commit. CPython's collector runs every 700 container
allocations and, as those objects survive, ever more often over the older
generations too, walking the whole batch again and again and freeing
nothing: the events form no cycles. On the benchmark's stream that was half
the projector's client CPU (decode + plan: 14.1 us per event with automatic
collection, 7.4 us without).

So while a projector or a rebuild runs, automatic collection is off and a full
collection runs between batches every ``interval`` seconds, for what cycles
there are (exceptions with their tracebacks, mostly). Collection is process
wide: it is switched back on when the last user leaves, so a projector run
inside a larger program (the tests run several in threads) leaves it as it
found it.
"""

from __future__ import annotations

import gc
import threading
import time
from types import TracebackType

_lock = threading.Lock()
_users = 0
_was_enabled = True


class ScheduledCollection:
    """Automatic collection off within the block; ``between_batches`` collects on a timer.

    ``interval`` None leaves Python's collector alone (both calls do nothing).
    """

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self._last = time.monotonic()
        self.collections = 0

    def __enter__(self) -> ScheduledCollection:
        global _users, _was_enabled
        if self.interval is not None:
            with _lock:
                if _users == 0:
                    _was_enabled = gc.isenabled()
                    gc.disable()
                _users += 1
        self._last = time.monotonic()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _users
        if self.interval is None:
            return
        with _lock:
            _users -= 1
            if _users == 0 and _was_enabled:
                gc.enable()

    def between_batches(self) -> None:
        """Collect in full if ``interval`` seconds have passed since the last time."""
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            gc.collect()
            self.collections += 1
            self._last = time.monotonic()
