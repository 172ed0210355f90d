"""Fixtures of the integration tests that drive the real ``factflow`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from factflow_lineage.config import Settings
from support.factflow_cli import Factflow


@pytest.fixture
def factflow(settings: Settings, tmp_path: Path, group_id: str) -> Factflow:
    """Run ``factflow ARGS`` on this test's topic, schema, storage and spool; init done.

    ``demo`` and ``execution replay`` run their projector in this test's own group.
    """
    env = {
        **os.environ,
        "FACTFLOW_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "FACTFLOW_TOPIC": settings.kafka.topic,
        "FACTFLOW_PG_SCHEMA": settings.postgres.schema,
        "FACTFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "FACTFLOW_SPOOL_DIR": str(tmp_path / "spool"),
    }
    env.pop("FACTFLOW_DEMO_FIXED", None)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:1] == ("demo",) or args[:2] == ("execution", "replay"):
            args = (*args, "--projector-group", group_id)
        done = subprocess.run(
            [sys.executable, "-m", "factflow_lineage", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert done.returncode == 0, f"factflow {' '.join(args)}: {done.stderr}"
        return done

    run("init", "--skip-topic")
    return run
