"""Logging that cannot flood: at most one record per kind and interval.

The recorder runs inside someone else's pipeline. A broker outage produces the
same failure a hundred thousand times a second; the operator needs to hear it
once a minute, with how many times it happened since.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

LOGGER = logging.getLogger("factflow_lineage.producer")


class RateLimitedLog:
    """Logs one record per ``kind`` per ``interval`` seconds, counting the rest.

    What was held back is never lost from the log: the next record of its
    kind says how many it stands for, and ``flush`` (the pump calls it a few
    times a second, ``close`` at the end) logs a summary of a kind that went
    quiet, so that the last burst of drops is told once they stop.
    """

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        # The last record held back, per kind: what its summary repeats.
        self._held: dict[str, tuple[int, str, tuple[Any, ...]]] = {}

    def log(self, level: int, kind: str, message: str, *args: Any, exc_info: Any = None) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                self._held[kind] = (level, message, args)
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
            self._held.pop(kind, None)
        if suppressed:
            message += " (and %d more like it since the last report)"
            args = (*args, suppressed)
        self._logger.log(level, message, *args, exc_info=exc_info)

    def flush(self, *, everything: bool = False) -> None:
        """Log a summary of each kind held back for a whole interval (or, with
        ``everything``, of each kind held back at all: at close)."""
        now = time.monotonic()
        due: list[tuple[int, str, tuple[Any, ...], int]] = []
        with self._lock:
            for kind, count in list(self._suppressed.items()):
                if everything or now - self._last.get(kind, 0.0) >= self._interval:
                    level, message, args = self._held.pop(kind)
                    del self._suppressed[kind]
                    self._last[kind] = now
                    due.append((level, message, args, count))
        for level, message, args, count in due:
            self._logger.log(
                level, message + " (%d times since the last report; none since)", *args, count
            )

    def warning(self, kind: str, message: str, *args: Any, exc_info: Any = None) -> None:
        self.log(logging.WARNING, kind, message, *args, exc_info=exc_info)

    def error(self, kind: str, message: str, *args: Any, exc_info: Any = None) -> None:
        self.log(logging.ERROR, kind, message, *args, exc_info=exc_info)


class RateLimitFilter(logging.Filter):
    """A filter that lets one record per message template and interval through.

    For librdkafka's own log lines, which repeat every reconnect attempt.
    """

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._interval = interval
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # librdkafka's facility (FAIL, REQTMOUT, ...) is the first argument of
        # its records; the template alone would merge every kind of message.
        facility = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        key = f"{record.msg}|{facility}"
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True
