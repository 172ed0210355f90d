"""The user's guide's debugging workflow, for real: demo, find, trace, read the bytes, replay.

Every step goes through the real ``factflow`` entry point (a subprocess) against
the real broker and database, on a topic, schema, consumer group, storage and
spool directory of this test's own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from factflow_lineage.config import Settings
from factflow_lineage.consumer import ProjectorConfig
from factflow_lineage.pipeline import _demo as demo
from factflow_lineage.pipeline import catch_up
from support.factflow_cli import Factflow


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


def _execution_id(demo_stdout: str) -> str:
    match = re.search(r"^execution ([0-9a-f-]{36}): (\w+)", demo_stdout, re.MULTILINE)
    assert match, demo_stdout
    return match.group(1)


def _stats(factflow: Factflow, execution: str) -> dict[str, tuple[int, int, int, int]]:
    document = _json(factflow("lineage", "stats", "--execution", execution, "--output", "json"))
    assert document["execution_id"] == execution
    rows = document["rows"]
    return {
        r["adapter_name"]: (r["count"], r["completed"], r["failed"], r["pending"]) for r in rows
    }


def _rows(factflow: Factflow, execution: str) -> list[dict[str, Any]]:
    document = _json(
        factflow("lineage", "list", "--execution", execution, "--limit", "1000", "-o", "json")
    )
    assert document["next_cursor"] is None
    rows: list[dict[str, Any]] = document["rows"]
    return rows


def test_the_guides_debugging_workflow(factflow: Factflow, tmp_path: Path) -> None:
    # The demo: one sitemap, 42 URLs, two of them trip the scraper.
    run = factflow("demo")
    execution = _execution_id(run.stdout)
    for line in (
        r"sitemap_scraper\s+sitemap_parser\s+1\s+1\s+0",
        r"sitemap_scraper\s+url_expander\s+1\s+1\s+0",
        r"sitemap_scraper\s+web_scraper\s+42\s+40\s+2",
        r"sitemap_scraper\s+web_content_storage\s+40\s+40\s+0",
    ):
        assert re.search(line, run.stdout), run.stdout
    assert "factflow lineage failures --execution" in run.stdout
    assert "<== this row" in run.stdout  # the chain of one failure
    assert f"factflow execution replay {execution} --from-stage web_scraper" in run.stdout
    assert _stats(factflow, execution) == {
        "sitemap_parser": (1, 1, 0, 0),
        "url_expander": (1, 1, 0, 0),
        "web_scraper": (42, 40, 2, 0),
        "web_content_storage": (40, 40, 0, 0),
    }

    # 1. execution get: status=failed
    got = _json(factflow("execution", "get", execution, "--output", "json"))
    assert got["status"] == "failed"
    assert got["pipeline"] == demo.PIPELINE
    assert "web_scraper: 2 of 42 failed" in got["error"]

    # 2. lineage failures --execution: the two failing rows
    failures = _json(factflow("lineage", "failures", "--execution", execution, "-o", "json"))
    failed_rows = failures["rows"]
    assert len(failed_rows) == 2
    assert {r["adapter_name"] for r in failed_rows} == {"web_scraper"}
    classes = {r["error"]["class"].rsplit(".", 1)[-1] for r in failed_rows}
    assert classes == {"UpstreamUnavailable", "UnicodeDecodeError"}

    # 3. lineage chain of one: the parent chain up to the sitemap's root
    tripped: dict[str, str] = {}
    for row in failed_rows:
        chain = _json(factflow("lineage", "chain", row["id"], "--output", "json"))
        nodes = chain["nodes"]
        assert [n["adapter_name"] for n in nodes] == [
            "sitemap_parser",
            "url_expander",
            "web_scraper",
        ]
        root = nodes[0]
        assert root["parent_id"] is None
        assert row["root_id"] == root["id"]
        assert nodes[1]["parent_id"] == root["id"] and nodes[2]["parent_id"] == nodes[1]["id"]
        assert nodes[2]["id"] == row["id"]

        # 4. + 5. metadata.input_key of the root and of the failing row: the stored bytes
        root_key = _json(factflow("lineage", "get", root["id"], "-o", "json"))["metadata"][
            "input_key"
        ]
        assert factflow("storage", "get", root_key).stdout == demo.sitemap_bytes().decode()
        failing = _json(factflow("lineage", "get", row["id"], "--output", "json"))
        key = failing["metadata"]["input_key"]
        assert key.startswith(f"executions/{execution}/sitemap_scraper/web_scraper/")
        message = json.loads(factflow("storage", "get", key).stdout)
        tripped[failing["error"]["class"].rsplit(".", 1)[-1]] = message["url"]
        if "503" in failing["error"]["message"]:
            assert message["url"] in failing["error"]["message"]
        as_json = _json(factflow("storage", "get", key, "--output", "json"))
        assert as_json["key"] == key and json.loads(as_json["data"]) == message

    # The bytes that tripped the scraper: the flaky page and the latin-1 page.
    assert tripped == {
        "UpstreamUnavailable": f"{demo.SITE}/guides/backpressure",
        "UnicodeDecodeError": f"{demo.SITE}/blog/2025-03-event-sourcing",
    }

    # The failing inputs are among what storage lists for the execution.
    listed = _json(factflow("storage", "list", "--execution", execution, "-o", "json"))
    keys = {item["key"] for item in listed}
    assert len(keys) == 1 + 1 + 42 + 40
    assert {
        _json(factflow("lineage", "get", r["id"], "-o", "json"))["input_key"] for r in failed_rows
    } <= keys

    # 8. fix (the --fixed scraper) and replay from the failing stage
    replayed = factflow("execution", "replay", execution, "--from-stage", "web_scraper", "--fixed")
    new = replayed.stdout.strip()
    assert uuid.UUID(new) and new != execution
    again = _json(factflow("execution", "get", new, "--output", "json"))
    assert again["replay_of"] == execution
    assert again["replay_from_stage"] == "web_scraper"
    assert again["status"] == "completed"
    assert _stats(factflow, new) == {
        "web_scraper": (2, 2, 0, 0),
        "web_content_storage": (2, 2, 0, 0),
    }
    rows = _rows(factflow, new)
    assert len(rows) == 4
    assert all(r["status"] == "completed" and r["settled"] and r["known"] for r in rows)
    assert all(r["children_expected"] == r["children_settled"] for r in rows)
    # New chain roots: the original rows' counters are not touched by the replay.
    assert all(r["parent_id"] is None for r in rows if r["adapter_name"] == "web_scraper")
    scraped = [r for r in rows if r["adapter_name"] == "web_scraper"]
    # Each replayed row says which original row it replays; its input is the
    # same bytes, stored again under the new execution with the same message id.
    assert {r["metadata"]["replayed_from"] for r in scraped} == {r["id"] for r in failed_rows}
    for r in scraped:
        original_key = r["metadata"]["replayed_input_key"]
        assert r["input_key"] == original_key.replace(execution, new)
        assert factflow("storage", "get", r["input_key"]).stdout == (
            factflow("storage", "get", original_key).stdout
        )
    # The replayed pages reached the content store.
    for page in ("guides/backpressure", "blog/2025-03-event-sourcing"):
        stored = tmp_path / "storage" / "content" / "docs.example.com" / f"{page}.json"
        assert json.loads(stored.read_bytes())["title"].endswith("| Factflow docs")
    # The original execution is untouched by its replay.
    assert _json(factflow("execution", "get", execution, "-o", "json"))["status"] == "failed"
    assert _stats(factflow, execution)["web_scraper"] == (42, 40, 2, 0)


def test_the_fixed_demo_completes_all_42(factflow: Factflow) -> None:
    run = factflow("demo", "--fixed")
    execution = _execution_id(run.stdout)
    assert re.search(r"sitemap_scraper\s+web_scraper\s+42\s+42\s+0", run.stdout), run.stdout
    assert _json(factflow("execution", "get", execution, "-o", "json"))["status"] == "completed"
    assert _stats(factflow, execution)["web_content_storage"] == (42, 42, 0, 0)
    assert "replay" not in run.stdout  # nothing to replay, none suggested


def test_demo_without_a_projector_here_then_catch_up(
    factflow: Factflow, settings: Settings, group_id: str
) -> None:
    run = factflow("demo", "--no-projector")
    execution = _execution_id(run.stdout)
    assert "projector not run here" in run.stderr
    assert "lineage stats" not in run.stdout
    # Recorded in Kafka and storage, not projected yet.
    missing = factflow("execution", "get", execution, check=False)
    assert missing.returncode == 1 and "no execution" in missing.stderr
    listed = _json(factflow("storage", "list", "--execution", execution, "-o", "json"))
    assert len(listed) == 84

    caught = catch_up(settings, config=ProjectorConfig(group_id=group_id))
    # 84 invocations (start + end each) and the execution's start and finish.
    assert caught.events == 2 * 84 + 2
    assert _stats(factflow, execution)["web_scraper"] == (42, 40, 2, 0)
    assert catch_up(settings, config=ProjectorConfig(group_id=group_id)).events == 0


def test_demo_refuses_to_start_without_the_stack_or_init(
    factflow: Factflow, settings: Settings, tmp_path: Path
) -> None:
    base = {
        **os.environ,
        "FACTFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "FACTFLOW_SPOOL_DIR": str(tmp_path / "spool"),
        "FACTFLOW_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "FACTFLOW_TOPIC": settings.kafka.topic,
        "FACTFLOW_PG_SCHEMA": settings.postgres.schema,
    }
    cases = {
        "no topic": ({"FACTFLOW_TOPIC": f"absent.{uuid.uuid4().hex[:8]}"}, "factflow init"),
        "no projection": ({"FACTFLOW_PG_SCHEMA": f"absent_{uuid.uuid4().hex[:8]}"}, "init"),
        "no broker": ({"FACTFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, "127.0.0.1:1"),
    }
    for name, (change, expected) in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "factflow_lineage", "demo"],
            env={**base, **change},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, (name, done.stderr)
        assert expected in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "storage").exists(), name  # nothing ran


def test_engine_records_each_message_and_isolates_failures(
    settings: Settings, tmp_path: Path, group_id: str, pg_dsn: str
) -> None:
    """The engine in-process with the real recorder: what each adapter outcome records."""
    from factflow_lineage import query
    from factflow_lineage.db import connect
    from factflow_lineage.migrations import apply_migrations, projection_migrations
    from factflow_lineage.pipeline import LocalStorage, Message, Pipeline, Route, Stage
    from factflow_lineage.producer import LineageRecorder, RecorderConfig

    def split(message: Message) -> list[Message]:
        return [Message(data=part) for part in message.data.split(b",")]

    def shout(message: Message) -> Iterator[Message]:
        yield Message(data=message.data.upper())
        if message.data == b"boom":
            raise RuntimeError("exploded after one output")  # half-way through a generator

    def sink(message: Message) -> list[Message]:
        return [message] if message.data == b"ECHO" else []  # a sink must not emit

    route = Route("r", (Stage("split", split), Stage("shout", shout), Stage("sink", sink)))
    storage = LocalStorage(tmp_path / "storage")
    config = RecorderConfig(
        bootstrap=settings.kafka.bootstrap, topic=settings.kafka.topic, spool_dir=tmp_path / "s"
    )
    with connect(pg_dsn) as conn:
        apply_migrations(conn, settings.postgres.schema, projection_migrations())
    with LineageRecorder(config) as recorder:
        result = Pipeline(recorder, storage, pipeline="engine-test").run(
            route, [Message(data=b"a,boom,echo,b")]
        )
        assert recorder.flush(15) == 0
    assert {n: (c.completed, c.failed) for n, c in result.counts.items()} == {
        "split": (1, 0),
        "shout": (3, 1),
        "sink": (2, 1),
    }
    catch_up(settings, config=ProjectorConfig(group_id=group_id))

    with connect(settings.postgres.read_dsn, schema=settings.postgres.schema) as conn:
        execution = query.get_execution(conn, result.execution_id)
        rows = query.list_lineage(conn, execution=result.execution_id, limit=100).rows
    assert execution.status == "failed"
    assert execution.error is not None and "shout: 1 of 4 failed" in execution.error
    by_input = {storage.get(r.input_key): r for r in rows if r.input_key}
    assert len(by_input) == len(rows) == 1 + 4 + 3
    boom = by_input[b"boom"]
    assert boom.status == "failed" and boom.error is not None
    assert "exploded after one output" in boom.error.message
    # The output yielded before the raise is not recorded: a failed invocation emits nothing.
    assert boom.children_expected == 0 and boom.settled
    echo = by_input[b"ECHO"]
    assert echo.status == "failed" and echo.error is not None
    assert echo.error.error_class.endswith("SinkEmitted")
    root = by_input[b"a,boom,echo,b"]
    assert root.parent_id is None and root.children_expected == 4
    assert root.settled and root.descendants_failed == 2
    assert all(r.root_id == root.id and r.execution_id == result.execution_id for r in rows)
    for r in rows:
        if r.adapter_name == "sink":
            parent = next(p for p in rows if p.id == r.parent_id)
            assert parent.adapter_name == "shout"
            assert storage.get(r.input_key or "") == storage.get(parent.input_key or "").upper()
