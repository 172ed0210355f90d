"""Rate-limited warnings never hide how many they stand for."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from pathlib import Path

import pytest

from factflow_lineage.producer import LineageRecorder, RecorderConfig
from factflow_lineage.producer._ratelog import LOGGER, RateLimitedLog


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_the_next_record_counts_what_was_held_back(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("t.ratelog"), interval=0.05)
    with caplog.at_level(logging.WARNING, "t.ratelog"):
        for i in range(5):
            log.warning("k", "event %d dropped", i)
        time.sleep(0.06)
        log.warning("k", "event %d dropped", 5)
    assert messages(caplog) == [
        "event 0 dropped",
        "event 5 dropped (and 4 more like it since the last report)",
    ]


def test_a_burst_that_stops_is_summed_up_once_it_is_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RateLimitedLog(logging.getLogger("t.ratelog"), interval=0.05)
    with caplog.at_level(logging.WARNING, "t.ratelog"):
        for i in range(1000):
            log.warning("k", "event %d dropped", i)
        log.flush()  # too early: the interval has not passed
        assert messages(caplog) == ["event 0 dropped"]
        time.sleep(0.06)
        log.flush()
        log.flush()  # once
    assert messages(caplog) == [
        "event 0 dropped",
        "event 999 dropped (999 times since the last report; none since)",
    ]


def test_close_tells_what_was_held_back_and_how_many_were_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # No spool and a tiny queue, the broker unreachable: events are dropped.
    config = RecorderConfig(
        bootstrap=f"127.0.0.1:{port}",
        topic="offline",
        spool_dir=None,
        queue_max_messages=10,
        log_interval_s=3600,
    )
    with caplog.at_level(logging.WARNING, LOGGER.name):
        recorder = LineageRecorder(config)
        for _ in range(100):
            with recorder.invocation(uuid.uuid4(), "r", "a"):
                pass
        dropped = recorder.stats().dropped
        recorder.close(0)
    text = [m for m in messages(caplog) if "dropped" in m]
    assert dropped == 190  # 200 events, 10 in the queue
    assert text[0].startswith("lineage event dropped: Kafka's queue is full and the spool is off")
    assert text[0].endswith("1 dropped so far")
    assert "189 times since the last report; none since" in text[1]
    assert text[1].endswith("190 dropped so far (189 times since the last report; none since)")
    assert any(
        m.startswith(f"lineage recorder closed: {dropped + 10} events were dropped") for m in text
    )
