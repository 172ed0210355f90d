"""Waiting out PostgreSQL and Kafka outages: jittered backoff, and saying so once.

The projector never crashes because a dependency went away: it waits, retries,
and resumes from its stored offsets. Operators must see that in the log, but one
line per state change, not one per retry: "PostgreSQL unavailable, retrying in
2.0s" when it goes down, "PostgreSQL available again after 12.3s" when it is back.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(kw_only=True)
class Backoff:
    """Exponential backoff with full jitter, capped; ``reset`` after a success.

    Jitter keeps several projectors that lost the same database from
    reconnecting in lockstep.
    """

    initial: float = 0.5
    maximum: float = 15.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (grows with each call until ``reset``)."""
        # The exponent stops growing once the cap is reached: 2.0**1024 overflows,
        # and an outage of a few hours is that many attempts.
        ceiling = min(self.maximum, self.initial * self.factor ** min(self._attempt, 64))
        self._attempt += 1
        # Half fixed, half random: never a zero delay, never a synchronized one.
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt


@dataclass(kw_only=True)
class Outage:
    """The up/down state of one dependency, logged once per change of state."""

    name: str
    log: logging.Logger
    clock: Callable[[], float] = time.monotonic
    _down_since: float | None = None
    _reason: str = ""

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, reason: str, retry_in: float | None = None) -> None:
        """Record a failure; logs only on the transition from up to down."""
        if self._down_since is None:
            self._down_since = self.clock()
            self._reason = reason
            if retry_in is None:
                self.log.warning("%s unavailable (%s), waiting", self.name, reason)
            else:
                self.log.warning(
                    "%s unavailable, retrying in %.1fs (%s)", self.name, retry_in, reason
                )
        else:
            self.log.debug("%s still unavailable (%s)", self.name, reason)

    def recovered(self) -> None:
        """Record a success; logs only on the transition from down to up."""
        if self._down_since is not None:
            elapsed = self.clock() - self._down_since
            self._down_since = None
            self.log.warning("%s available again after %.1fs, resuming", self.name, elapsed)
