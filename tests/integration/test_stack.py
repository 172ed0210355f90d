"""scripts/stack, through its command line, against the real local stack.

Self-contained on purpose: the stack script must work before anything else does,
so these tests use no project fixture, only the script and the real services.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from pathlib import Path

import pytest

from factflow_lineage.config import DEFAULT_BOOTSTRAP, DEFAULT_PG_DSN, DEFAULT_PG_READ_DSN

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
BOOTSTRAP = os.environ.get("FACTFLOW_KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP
PG_DSN = os.environ.get("FACTFLOW_PG_DSN") or DEFAULT_PG_DSN
PG_READ_DSN = os.environ.get("FACTFLOW_PG_READ_DSN") or DEFAULT_PG_READ_DSN
KAFKA_LOGGER = logging.getLogger("tests.stack.kafka")


def stack(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the script as users do: its own shebang, our environment plus `env`."""
    return subprocess.run(
        [str(STACK), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def parse_status(stdout: str) -> dict[str, tuple[str, str]]:
    """{"kafka": ("running", "12345"), ...} from `scripts/stack status`."""
    services = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "pid":
            services[fields[0]] = (fields[1], fields[3])
    return services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def status() -> dict[str, tuple[str, str]]:
    """The stack's state before the tests touch it; skips (fails in CI) when it is down."""
    done = stack("status")
    if done.returncode != 0:
        message = f"the local stack is not up (`scripts/stack up`):\n{done.stdout}{done.stderr}"
        if IN_CI:
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return parse_status(done.stdout)


def test_status_exits_zero_and_names_both_services(status: dict[str, tuple[str, str]]) -> None:
    assert set(status) == {"kafka", "postgres"}
    for name, (state, pid) in status.items():
        assert state in {"running", "external"}, name
        assert pid.isdigit() == (state == "running"), (name, pid)


def test_up_twice_changes_nothing_and_says_already_running(
    status: dict[str, tuple[str, str]],
) -> None:
    for _ in range(2):
        done = stack("up")
        assert done.returncode == 0, done.stderr
        assert "started" not in done.stdout
        for name, (state, pid) in status.items():
            expected = f"{name}: already running (pid {pid}," if state == "running" else "external"
            line = next(li for li in done.stdout.splitlines() if li.startswith(f"{name}:"))
            assert expected in line, done.stdout
    after = stack("status")
    assert after.returncode == 0
    assert parse_status(after.stdout) == status  # same processes: nothing was restarted


def test_env_prints_exports_that_a_shell_can_eval() -> None:
    tricky = {
        "FACTFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
        "FACTFLOW_PG_DSN": "postgresql://w:it's%20$HOME@127.0.0.1:15432/factflow",
        "FACTFLOW_PG_READ_DSN": "postgresql://r:x`y`@127.0.0.1:15432/factflow",
    }
    script = f'eval "$("{STACK}" env)" && printf "%s\\n" "$FACTFLOW_KAFKA_BOOTSTRAP" '
    script += '"$FACTFLOW_PG_DSN" "$FACTFLOW_PG_READ_DSN"'
    done = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, **tricky},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == list(tricky.values())


def test_env_defaults_are_the_settings_defaults() -> None:
    unset = {k: "" for k in ("FACTFLOW_KAFKA_BOOTSTRAP", "FACTFLOW_PG_DSN", "FACTFLOW_PG_READ_DSN")}
    done = stack("env", env=unset)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"export FACTFLOW_KAFKA_BOOTSTRAP={DEFAULT_BOOTSTRAP}",
        f"export FACTFLOW_PG_DSN={DEFAULT_PG_DSN}",
        f"export FACTFLOW_PG_READ_DSN={DEFAULT_PG_READ_DSN}",
    ]


def test_a_stack_that_is_not_there_is_reported_in_one_line_each(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "FACTFLOW_STACK_DIR": str(tmp_path / "stack"),
        "FACTFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "FACTFLOW_PG_DSN": f"postgresql://a:a@127.0.0.1:{port}/db",
        "FACTFLOW_PG_READ_DSN": f"postgresql://b:b@127.0.0.1:{port}/db",
    }
    status = stack("status", env=env)
    assert status.returncode == 1
    assert {state for state, _ in parse_status(status.stdout).values()} == {"stopped"}
    stopped = stack("stop", "kafka", env=env)
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "kafka: not running")
    killed = stack("kill", "postgres", env=env)
    assert killed.returncode == 1
    assert killed.stderr.startswith("stack: error: postgres: not running")
    assert "Traceback" not in status.stderr + stopped.stderr + killed.stderr
    assert len(killed.stderr.strip().splitlines()) == 1
