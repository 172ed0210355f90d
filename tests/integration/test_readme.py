"""The README's examples run as written (against the real broker)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_examples() -> None:
    assert _python_blocks(), "the README lost its examples"


def test_every_python_example_runs_and_its_events_reach_the_topic(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    from confluent_kafka import Consumer

    from factflow_lineage.schemas import decode

    topic = new_topic(partitions=1)
    env = {
        **os.environ,
        "FACTFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FACTFLOW_TOPIC": topic,
        "FACTFLOW_SPOOL_DIR": str(tmp_path / "spool"),
    }
    for block in _python_blocks():
        result = subprocess.run(
            [sys.executable, "-c", block], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr

    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    types: list[str] = []
    try:
        for _ in range(60):
            for message in consumer.consume(100, timeout=0.5):
                if not message.error():
                    types.append(decode(message.value())["event_type"])
            if types.count("INVOCATION_FAILED") and types.count("EXECUTION_FINISHED"):
                break
    finally:
        consumer.close()
    # The producer example: 1 execution, 1 + 2 invocations, a batch of 2 with one failure.
    assert types.count("EXECUTION_STARTED") == 1
    assert types.count("INVOCATION_STARTED") == 5
    assert types.count("INVOCATION_COMPLETED") == 4
    assert types.count("INVOCATION_FAILED") == 1
