"""The service's small parts: signals become a stop event, the consumer's configuration."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from factflow_lineage.consumer._cli import _table
from factflow_lineage.consumer._service import ProjectorConfig, consumer_config, stop_on_signals


def test_sigterm_sets_the_stop_event_and_a_second_one_aborts() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(threading.Event()) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises as soon as the signal arrives
    assert signal.getsignal(signal.SIGTERM) is before


def test_consumer_config_leaves_positions_to_postgres() -> None:
    conf = consumer_config("broker:9092", ProjectorConfig(group_id="g"))
    assert conf["enable.auto.commit"] is False
    assert conf["enable.auto.offset.store"] is False
    assert conf["group.id"] == "g"
    assert conf["group.protocol"] == "consumer"
    assert "partition.assignment.strategy" not in conf  # not a KIP-848 setting
    classic = consumer_config(
        "broker:9092", ProjectorConfig(group_id="g", group_protocol="classic")
    )
    assert classic["partition.assignment.strategy"] == "cooperative-sticky"


def test_table_aligns_columns() -> None:
    text = _table(("A", "LONG HEADER"), [(1, None), ("wide value", 2)])
    assert text.splitlines() == [
        "A           LONG HEADER",
        "1",
        "wide value  2",
    ]
