"""A private Kafka broker or PostgreSQL server for tests that break things.

Outage and crash tests stop, kill and restart their service; doing that to the
shared stack would disturb every other test. These start a second instance
through the same ``scripts/stack`` (so they are the same real software with
the same configuration), in their own state dir and on their own ports.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack"


def free_port() -> int:
    """A loopback port nobody listens on now, below the ephemeral range.

    Not the kernel's choice (port 0): that comes from the ephemeral range
    (32768-60999), where a client's outgoing connection may take the port
    while our broker is stopped, and its restart then fails to bind.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000-32000")


@dataclass
class PrivateService:
    """One service of a private stack: ``stop``, ``start``, ``kill`` drive it."""

    service: str
    env: dict[str, str]
    state_dir: Path
    running: bool = field(default=False)

    def _stack(self, *args: str, timeout: float = 180) -> None:
        result = subprocess.run(
            [str(STACK), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"scripts/stack {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )

    def start(self) -> None:
        self._stack("up", self.service)
        self.running = True

    def stop(self) -> None:
        self._stack("stop", self.service)
        self.running = False

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        self._stack("kill", self.service)
        self.running = False

    def destroy(self) -> None:
        try:
            self._stack("down", self.service, timeout=60)
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)


class PrivateKafka(PrivateService):
    @property
    def bootstrap(self) -> str:
        return self.env["FACTFLOW_KAFKA_BOOTSTRAP"]


class PrivatePostgres(PrivateService):
    @property
    def dsn(self) -> str:
        return self.env["FACTFLOW_PG_DSN"]

    @property
    def read_dsn(self) -> str:
        return self.env["FACTFLOW_PG_READ_DSN"]


def _state_dir(kind: str) -> Path:
    state = Path(tempfile.mkdtemp(prefix=f"factflow-private-{kind}-"))
    shared_jars = REPO / ".stack" / "kafka-jars"
    if shared_jars.is_dir():
        # Same pinned jars: reuse them rather than resolving them again.
        (state / "kafka-jars").symlink_to(shared_jars)
    return state


def private_kafka() -> PrivateKafka:
    """A second broker on free ports; call ``start()`` before use."""
    port, controller = free_port(), free_port()
    state = _state_dir("kafka")
    env = {
        "FACTFLOW_STACK_DIR": str(state),
        "FACTFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "FACTFLOW_KAFKA_CONTROLLER_PORT": str(controller),
    }
    return PrivateKafka("kafka", env, state)


def private_postgres() -> PrivatePostgres:
    """A second PostgreSQL with the same roles and database, on a free port."""
    port = free_port()
    state = _state_dir("postgres")
    env = {
        "FACTFLOW_STACK_DIR": str(state),
        "FACTFLOW_PG_DSN": f"postgresql://factflow_writer:factflow_writer@127.0.0.1:{port}/factflow",
        "FACTFLOW_PG_READ_DSN": (
            f"postgresql://factflow_reader:factflow_reader@127.0.0.1:{port}/factflow"
        ),
    }
    return PrivatePostgres("postgres", env, state)
