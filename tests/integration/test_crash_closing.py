"""A crash is visible as a crash: what a killed pipeline had open ends failed.

A pipeline killed with kill -9 leaves invocations that started and never
ended. When its spool is recovered (``factflow spool drain``, or the next
recorder on the spool directory) each is recorded on the topic as failed with
``ProcessDied`` (pid, host, time of the last event), its execution as failed;
``lineage failures`` lists the crash point and a rebuild agrees. For a machine
that never comes back, ``factflow execution abandon`` does the same from the
projection.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from test_projector_support import checksums

from factflow_lineage import query
from factflow_lineage.config import Settings
from factflow_lineage.consumer import ProjectorConfig, RebuildOptions, rebuild
from factflow_lineage.db import connect
from factflow_lineage.pipeline import catch_up
from factflow_lineage.producer import LineageRecorder, RecorderConfig
from support.factflow_cli import Factflow

pytestmark = pytest.mark.integration

# A pipeline that records a small DAG, leaves some of it open (a thread mid-
# invocation, a batch half done, a chain whose leaf is running), prints what
# it did as one JSON line, then waits to be killed.
PIPELINE = r"""
import json, os, sys, threading, time
from factflow_lineage.producer import LineageRecorder, RecorderConfig

bootstrap, topic, spool, mode = sys.argv[1:5]
rec = LineageRecorder(RecorderConfig(bootstrap=bootstrap, topic=topic, spool_dir=spool))
run = rec.execution(pipeline="crashy")
done, open_ = [], []
with rec.invocation(run, "ingest", "split", input=b"in") as root:
    refs = [root.output(n) for n in (b"a", b"b", b"c")]
done.append(root.id)
with rec.invocation(run, "ingest", "fetch", input=b"a", parent=refs[0]) as a:
    pass
done.append(a.id)
running = rec.invocation(run, "ingest", "fetch", input=b"b", parent=refs[1])
open_.append(running.id)
leaf = rec.invocation(run, "ingest", "store", input=b"b1", parent=running.output(b"b1"))
open_.append(leaf.id)
batch = rec.batch(run, "ingest", "embed", inputs=[b"x", b"y", b"z"])
batch[0].complete()
done.append(batch[0].id)
open_.extend(item.id for item in batch[1:])
started = threading.Event()
def worker():
    inv = rec.invocation(run, "ingest", "slow", input=b"c", parent=refs[2])
    open_.append(inv.id)
    started.set()
    time.sleep(3600)
threading.Thread(target=worker, daemon=True).start()
started.wait()
if mode == "fork":
    # Started here, ended in a forked child: the child's end frees its slot
    # in this process's table (shared mapping), so the crash does not close it.
    handed = rec.invocation(run, "ingest", "forked", input=b"f", parent=refs[2])
    pid = os.fork()
    if pid == 0:
        handed.complete()
        rec.close(10)
        os._exit(0)
    os.waitpid(pid, 0)
    done.append(handed.id)
if mode != "undelivered":
    assert rec.flush(30) == 0
print(json.dumps({
    "execution": str(run.id), "pid": os.getpid(),
    "done": [str(i) for i in done], "open": [str(i) for i in open_],
}), flush=True)
time.sleep(3600)
"""


def run_and_kill(settings: Settings, spool: Path, tmp_path: Path, mode: str = "plain") -> Any:
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE, encoding="utf-8")
    with subprocess.Popen(
        [sys.executable, str(script), settings.kafka.bootstrap, settings.kafka.topic, spool, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stderr is not None
            line = child.stdout.readline()
            if not line:
                child.wait(10)
                pytest.fail(f"the pipeline died before it was killed: {child.stderr.read()}")
            info = json.loads(line)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
    assert child.returncode == -signal.SIGKILL
    return info


def project(settings: Settings, group_id: str) -> None:
    catch_up(settings, config=ProjectorConfig(group_id=group_id))


def rows_of(settings: Settings, execution: str) -> tuple[Any, dict[UUID, Any]]:
    with connect(settings.postgres.read_dsn, schema=settings.postgres.schema) as conn:
        run = query.get_execution(conn, execution)
        rows = {r.id: r for r in query.list_lineage(conn, execution=execution, limit=1000).rows}
    return run, rows


def assert_crash_closed(settings: Settings, info: Any, *, by: str) -> None:
    run, rows = rows_of(settings, info["execution"])
    opened = {UUID(i) for i in info["open"]}
    done = {UUID(i) for i in info["done"]}
    assert set(rows) == opened | done
    for ident in opened:
        row = rows[ident]
        assert row.status == "failed", row
        assert row.error is not None and row.error.error_class == "ProcessDied"
        assert by in row.error.message
    for ident in done:
        assert rows[ident].status == "completed"
    assert all(r.settled for r in rows.values()), [r for r in rows.values() if not r.settled]
    assert run.status == "failed" and run.settled and run.pending == 0
    assert run.failed == len(opened) and run.error and run.error.startswith("ProcessDied: ")


@pytest.mark.parametrize("mode", ["plain", "undelivered"])
def test_spool_drain_records_a_killed_pipelines_open_work_as_failed(
    settings: Settings, factflow: Factflow, tmp_path: Path, group_id: str, mode: str
) -> None:
    spool = tmp_path / "spool"
    info = run_and_kill(settings, spool, tmp_path, mode)
    if mode == "plain":
        # Before the recovery: the crash looks like work still running.
        project(settings, group_id)
        run, rows = rows_of(settings, info["execution"])
        assert run.status == "running"
        assert {str(i) for i, r in rows.items() if r.status == "pending"} == set(info["open"])

    drained = factflow("spool", "drain", "--spool-dir", str(spool), "--timeout", "60")
    assert "closed 6 invocations or executions" in drained.stdout, drained.stdout
    project(settings, group_id)
    assert_crash_closed(settings, info, by=f"process {info['pid']} on host {socket.gethostname()}")

    failures = factflow("lineage", "failures", "--execution", info["execution"], "-o", "json")
    listed = {r["id"] for r in json.loads(failures.stdout)["rows"]}
    assert listed == set(info["open"])
    got = factflow("lineage", "get", info["open"][0])
    assert "ProcessDied" in got.stdout and "last lineage event was at" in got.stdout

    # Draining again finds nothing; a rebuild from the topic agrees.
    again = factflow("spool", "drain", "--spool-dir", str(spool))
    assert "nothing to re-send" in again.stdout
    live = checksums(settings.postgres.dsn, settings.postgres.schema)
    rebuild(settings, RebuildOptions(catch_up_lag=0, drop_old=True))
    assert checksums(settings.postgres.dsn, settings.postgres.schema) == live


def test_the_next_recorder_on_the_spool_closes_what_the_dead_one_left(
    settings: Settings, factflow: Factflow, tmp_path: Path, group_id: str
) -> None:
    spool = tmp_path / "spool"
    info = run_and_kill(settings, spool, tmp_path, "undelivered")
    config = RecorderConfig(
        bootstrap=settings.kafka.bootstrap, topic=settings.kafka.topic, spool_dir=spool
    )
    with LineageRecorder(config) as recorder:
        deadline = time.monotonic() + 60
        while recorder.stats().recovering and time.monotonic() < deadline:
            time.sleep(0.05)
        assert recorder.flush(30) == 0
        stats = recorder.stats()
    assert stats.recovering == 0 and stats.crash_closed == 6 and stats.recovered > 6
    assert [p.name for p in spool.iterdir()] == []  # its own directory went with a clean close
    project(settings, group_id)
    assert_crash_closed(settings, info, by=f"process {info['pid']} on host")


def test_an_invocation_ended_in_a_forked_child_is_not_closed_by_the_parents_crash(
    settings: Settings, factflow: Factflow, tmp_path: Path, group_id: str
) -> None:
    spool = tmp_path / "spool"
    info = run_and_kill(settings, spool, tmp_path, "fork")
    factflow("spool", "drain", "--spool-dir", str(spool), "--timeout", "60")
    project(settings, group_id)
    assert_crash_closed(settings, info, by="died while this was running")
    _, rows = rows_of(settings, info["execution"])
    assert rows[UUID(info["done"][-1])].adapter_name == "forked"


def test_execution_abandon_closes_what_a_lost_machine_left_open(
    settings: Settings, factflow: Factflow, tmp_path: Path, group_id: str
) -> None:
    spool = tmp_path / "spool"
    info = run_and_kill(settings, spool, tmp_path)
    shutil.rmtree(spool)  # the machine is gone, its spool with it
    project(settings, group_id)
    execution = info["execution"]

    # Just killed: it looks alive, so the operator must say --force.
    refused = factflow("execution", "abandon", execution, check=False)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--force" in lines[0] and "Traceback" not in refused.stderr

    done = factflow("execution", "abandon", execution[:8], "--idle", "0", "-o", "json")
    report = json.loads(done.stdout)
    assert report["invocations"] == 5 and report["execution_closed"] is True
    # Twice before the projector caught up: the same events, recorded once.
    factflow("execution", "abandon", execution, "--force")
    project(settings, group_id)
    assert_crash_closed(settings, info, by="abandoned by an operator")
    again = factflow("execution", "abandon", execution, "--force")
    assert "nothing open to abandon" in again.stdout
    with connect(settings.postgres.read_dsn, schema=settings.postgres.schema) as conn:
        failed = query.failures(conn, execution=execution, limit=100).rows
    assert len(failed) == 5  # not ten

    unknown = factflow(
        "execution", "abandon", "0" * 8 + "-0000-0000-0000-000000000000", check=False
    )
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
    garbage = factflow("execution", "abandon", "not-an-id", check=False)
    assert garbage.returncode == 2 and "Traceback" not in garbage.stderr


def test_a_clean_close_leaves_nothing_to_close(settings: Settings, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    config = RecorderConfig(
        bootstrap=settings.kafka.bootstrap, topic=settings.kafka.topic, spool_dir=spool
    )
    with LineageRecorder(config) as recorder:
        run = recorder.execution(pipeline="clean")
        recorder.invocation(run, "r", "left-open")
        own = spool / recorder.producer_id.hex()
        assert sorted(p.name for p in own.iterdir() if p.suffix == ".tbl") == ["open-0000.tbl"]
    assert not own.exists()
    with LineageRecorder(config) as recorder:
        time.sleep(0.3)
        assert recorder.stats().crash_closed == 0
    assert os.listdir(spool) == []


def test_abandon_refuses_while_the_projection_is_behind_the_topic(
    settings: Settings, factflow: Factflow, tmp_path: Path, group_id: str
) -> None:
    spool = tmp_path / "spool"
    info = run_and_kill(settings, spool, tmp_path)
    shutil.rmtree(spool)
    project(settings, group_id)
    # One more fact reaches the topic, not yet the projection: a row shown
    # pending may have ended, and failed would outrank its completion for good.
    with LineageRecorder(
        RecorderConfig(
            bootstrap=settings.kafka.bootstrap, topic=settings.kafka.topic, spool_dir=None
        )
    ) as recorder:
        recorder.execution(pipeline="late")
        assert recorder.flush(30) == 0
    refused = factflow("execution", "abandon", info["execution"], "--idle", "0", check=False)
    assert refused.returncode == 2 and "events behind topic" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    project(settings, group_id)
    factflow("execution", "abandon", info["execution"], "--idle", "0")
