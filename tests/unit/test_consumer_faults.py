"""Backoff and outage logging of the projector: bounded, jittered, one line per state change."""

from __future__ import annotations

import logging
import random

import pytest

from factflow_lineage.consumer._faults import Backoff, Outage


def test_backoff_grows_to_its_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.attempts == 8


def test_backoff_jitter_differs_between_processes() -> None:
    a = Backoff(rng=random.Random(1))
    b = Backoff(rng=random.Random(2))
    assert [a.next_delay() for _ in range(3)] != [b.next_delay() for _ in range(3)]


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, rng=random.Random(3))
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_outage_logs_once_per_state_change(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outage = Outage(name="PostgreSQL", log=logging.getLogger("t.outage"), clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="t.outage")
    for delay in (0.5, 1.0, 2.0):
        outage.failed("connection refused", delay)
    assert outage.down
    now[0] = 112.5
    outage.recovered()
    outage.recovered()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "PostgreSQL unavailable, retrying in 0.5s (connection refused)",
        "PostgreSQL available again after 12.5s, resuming",
    ]
    assert not outage.down


def test_outage_without_retry_delay_says_waiting(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage(name="Kafka", log=logging.getLogger("t.kafka"))
    caplog.set_level(logging.WARNING, logger="t.kafka")
    outage.failed("all brokers down")
    assert [r.getMessage() for r in caplog.records] == [
        "Kafka unavailable (all brokers down), waiting"
    ]


def test_backoff_stays_at_its_cap_through_an_outage_of_hours() -> None:
    backoff = Backoff(initial=0.5, maximum=15.0)
    delays = [backoff.next_delay() for _ in range(5000)]  # once 2.0**1024 overflowed
    assert all(7.5 <= d <= 15.0 for d in delays[10:])
