"""kill -9 at a random moment: every event whose call returned reaches Kafka."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from test_producer_support import CHILD, consume, recorder, wait_recovered
from typer.testing import CliRunner

from factflow_lineage.producer._cli import spool_app

pytestmark = pytest.mark.integration


def run_and_kill(bootstrap: str, topic: str, spool_dir: Path, script: Path) -> list[bytes]:
    """Start the child pipeline, SIGKILL it at a random moment, return the ids
    of the invocations it started (printed after each call returned)."""
    errors = spool_dir.parent / "child.stderr"
    with (
        errors.open("wb") as stderr,
        subprocess.Popen(
            [sys.executable, str(script), bootstrap, topic, str(spool_dir), str(uuid.uuid4())],
            stdout=subprocess.PIPE,
            stderr=stderr,
        ) as child,
    ):
        assert child.stdout is not None
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(child.stdout or []), daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while not lines and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lines and lines[0] == b"ready\n", errors.read_text()
        time.sleep(random.uniform(0.5, 2.5))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        reader.join(10)
    assert child.returncode == -signal.SIGKILL
    # A line without its newline was being written when the kill came: the
    # call had returned, but we cannot read its id; the rest we check.
    ids = [bytes.fromhex(line.decode().strip()) for line in lines[1:] if _is_id(line)]
    assert len(ids) > 100, f"the child recorded only {len(ids)} invocations before the kill"
    return ids


def _is_id(line: bytes) -> bool:
    return line.endswith(b"\n") and len(line) == 33


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    script = tmp_path / "pipeline.py"
    script.write_text(CHILD, encoding="utf-8")
    return script


def started_ids(bootstrap: str, topic: str, expected: set[bytes]) -> set[bytes]:
    def all_there(events: list) -> bool:  # type: ignore[type-arg]
        return expected <= {
            e.payload["lineage_id"] for e in events if e.kind == "INVOCATION_STARTED"
        }

    events = consume(bootstrap, topic, until=all_there, timeout=60)
    return {e.payload["lineage_id"] for e in events if e.kind == "INVOCATION_STARTED"}


def test_a_new_recorder_recovers_what_a_killed_process_left(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, child_script: Path
) -> None:
    topic = new_topic()
    spool = tmp_path / "spool"
    ids = run_and_kill(kafka_bootstrap, topic, spool, child_script)
    assert len(os.listdir(spool)) == 1  # the dead process's spool is still there

    with recorder(kafka_bootstrap, topic, spool) as rescuer:
        wait_recovered(rescuer)
        stats = rescuer.stats()
    # With a 1 s linger, the last second of events never left the child: the
    # spool must have brought some back for this test to mean anything.
    assert stats.recovered > 0
    missing = set(ids) - started_ids(kafka_bootstrap, topic, set(ids))
    assert not missing, f"{len(missing)} of {len(ids)} started invocations never reached Kafka"
    assert os.listdir(spool) == []


def test_spool_drain_recovers_what_a_killed_process_left(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path, child_script: Path
) -> None:
    topic = new_topic()
    spool = tmp_path / "spool"
    ids = run_and_kill(kafka_bootstrap, topic, spool, child_script)

    result = CliRunner().invoke(
        spool_app,
        ["drain", "--spool-dir", str(spool), "--timeout", "60", "--bootstrap", kafka_bootstrap],
    )
    assert result.exit_code == 0, result.output
    assert "re-sent" in result.stdout and "from 1 spools" in result.stdout
    missing = set(ids) - started_ids(kafka_bootstrap, topic, set(ids))
    assert not missing, f"{len(missing)} of {len(ids)} started invocations never reached Kafka"
    assert os.listdir(spool) == []
