"""Hostile values on the real broker and database: a fact is never lost for a value.

NUL in every text field, lone surrogates, huge and deep values, garbage ids and
parents, events of another producer with times and counts out of range: every
invocation is projected, the failures are in ``lineage failures``, the
execution counts them and settles, a failed child's chain reaches its root,
the repair is noted on the row, and nothing goes to dead letters.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from factflow_lineage._repair import MAX_MICROS, NOTE_KEY
from factflow_lineage.config import Settings
from factflow_lineage.consumer import ProjectorConfig
from factflow_lineage.pipeline import catch_up
from factflow_lineage.producer import LineageRecorder, RecorderConfig
from factflow_lineage.schemas import encode
from support.factflow_cli import Factflow
from tests.support.events import T0, EventBuilder

pytestmark = pytest.mark.integration

U = "\ufffd"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class ItemsRaise(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("items() broke")


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_hostile_values_are_repaired_and_noted_never_dropped(
    factflow: Factflow, settings: Settings, group_id: str, tmp_path: Path
) -> None:
    config = RecorderConfig(
        bootstrap=settings.kafka.bootstrap, topic=settings.kafka.topic, spool_dir=tmp_path / "s"
    )
    ids: dict[str, str] = {}
    with LineageRecorder(config) as recorder:
        with recorder.execution("ingest\x00", metadata={"env\x00": "prod\x00"}) as run:
            execution = str(run.id)
            with recorder.invocation(
                run,
                "route\x00",
                "adapter\x00",
                input=b"<urlset/>",
                input_key="key\x00.xml",
                metadata={"k\x00": "v\x00", "nan": float("nan"), "blob": "x" * 2_000_000},
            ) as root:
                refs = [root.output(str(i)) for i in range(6)]
            ids["root"] = str(root.id)
            # A failure whose message holds a NUL: projected failed, counted.
            with (
                pytest.raises(ValueError),
                recorder.invocation(
                    run, "fetch", "web_scraper", parent=refs[0], input_hash="sha\x00"
                ) as nul,
            ):
                raise ValueError("bad \x00 byte in page")
            ids["nul"] = str(nul.id)
            # Lone surrogates (a file name from os.fsdecode): in the input and the message.
            with (
                pytest.raises(FileNotFoundError),
                recorder.invocation(
                    run, "fetch", "web_scraper", parent=refs[1], input="f\udcff"
                ) as sur,
            ):
                raise FileNotFoundError("no such file: /in/\udcff.html")
            ids["surrogate"] = str(sur.id)
            # What the caller passes but cannot be taken as given.
            with recorder.invocation(
                run, "fetch", "deep", parent=refs[2], input=_deep(100_000)
            ) as deep:
                pass
            ids["deep"] = str(deep.id)
            with recorder.invocation(
                run, "fetch", "items", parent=refs[3], input=ItemsRaise(a=1)
            ) as items:
                pass
            ids["items"] = str(items.id)
            with recorder.invocation(
                run, "fetch", "hash", parent=refs[4], input_hash=12345
            ) as bad_hash:  # type: ignore[arg-type]
                pass
            ids["hash"] = str(bad_hash.id)
            with recorder.batch(
                run,
                "embed",
                "embedder",
                inputs=["a", "b"],
                parents=[refs[5], refs[5]],
                input_keys=[5, None],
            ) as batch:  # type: ignore[list-item]
                batch[1].fail(RuntimeError("embedder \x00 broke"))
            ids["batch0"], ids["batch1"] = str(batch[0].id), str(batch[1].id)
            with recorder.invocation(run, "fetch", "garbage_parent", parent="garbage") as orphan:
                pass
            ids["garbage_parent"] = str(orphan.id)
            with recorder.invocation(run, "r" * 5000, "long_route") as long_route:
                pass
            ids["long_route"] = str(long_route.id)
        # An execution id whose __str__ raises: filed under a deterministic id.
        with (
            recorder.execution("unprintable", execution_id=Unprintable()) as odd,
            recorder.invocation(Unprintable(), "r", "a") as filed,
        ):
            pass
        assert recorder.flush(30) == 0
        stats = recorder.stats()
    assert stats.dropped == 0 and stats.errors == 0
    assert stats.repaired >= 7

    # Another producer: a start dated year 10000 and a completion with a
    # negative child count, as decodable events with values the tables cannot hold.
    b = EventBuilder()
    foreign = uuid.uuid4().bytes
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap})
    for event in (
        b.started(
            lineage_id=foreign, execution_id=run.id.bytes, at=MAX_MICROS + 1, route_id="x\x00"
        ),
        b.completed(lineage_id=foreign, execution_id=run.id.bytes, at=T0, children=-4),
    ):
        producer.produce(settings.kafka.topic, encode(event), key=foreign)
    assert producer.flush(30) == 0

    catch_up(settings, config=ProjectorConfig(group_id=group_id))

    # Nothing in dead letters.
    pg = settings.postgres
    with psycopg.connect(pg.dsn) as conn:
        letters = conn.execute(
            f'SELECT count(*), max(error) FROM "{pg.schema}".dead_letters'
        ).fetchone()
    assert letters == (0, None)

    # The failures are listed, the execution counts them and settles.
    failures = _json(factflow("lineage", "failures", "--execution", execution, "-o", "json"))
    failed = {r["id"]: r for r in failures["rows"]}
    assert set(failed) == {ids["nul"], ids["surrogate"], ids["batch1"]}
    got = _json(factflow("execution", "get", execution, "-o", "json"))
    assert got["pipeline"] == f"ingest{U}"
    assert (got["failed"], got["pending"], got["status"], got["settled"]) == (
        3,
        0,
        "completed",
        True,
    )
    # The root, its 7 children (5 invocations, a batch of 2), 2 more roots, the foreign row.
    assert got["total"] == 1 + 7 + 2 + 1
    assert got["metadata"][f"env{U}"] == f"prod{U}"
    assert "metadata key" in got["repaired"]

    # A failed child's chain reaches the root, whose start lost nothing.
    chain = _json(factflow("lineage", "chain", ids["nul"], "-o", "json"))
    nodes = [n["id"] for n in chain["nodes"]]
    assert nodes[:2] == [ids["root"], ids["nul"]]
    root = chain["nodes"][0]
    assert (root["route_id"], root["adapter_name"], root["input_key"]) == (
        f"route{U}",
        f"adapter{U}",
        f"key{U}.xml",
    )
    assert root["metadata"]["input_key"] == f"key{U}.xml"
    assert root["children_settled"] == 7 and root["settled"] and root["descendants_failed"] == 3

    # The note is on the row: the json, the API's model, the card.
    def row(name: str) -> dict[str, Any]:
        document: dict[str, Any] = _json(factflow("lineage", "get", ids[name], "-o", "json"))
        return document

    nul_row = row("nul")
    assert nul_row["status"] == "failed"
    assert nul_row["error"]["message"] == f"bad {U} byte in page"
    assert "error_message: NUL replaced by U+FFFD" in nul_row["repaired"]
    assert "input_hash: NUL replaced by U+FFFD" in nul_row["repaired"]
    assert nul_row["metadata"][NOTE_KEY] == "input_hash: NUL replaced by U+FFFD"
    assert "route_id: NUL replaced by U+FFFD" in root["repaired"]
    assert "metadata['nan']: NaN recorded as text" in root["repaired"]
    surrogate = row("surrogate")
    assert surrogate["error"]["message"] == f"no such file: /in/{U}.html"
    assert "error_message: lone surrogates replaced by U+FFFD" in surrogate["repaired"]
    assert "input_hash: the input could not be hashed" in surrogate["repaired"]
    assert "[factflow.repaired" not in (surrogate["error"]["traceback"] or "")
    assert "could not be hashed" in row("deep")["repaired"]
    assert "could not be hashed" in row("items")["repaired"]
    hashed = row("hash")
    assert (hashed["input_hash"], hashed["parent_id"]) == ("12345", root["id"])
    assert hashed["repaired"] == "input_hash: an int given, recorded as its text"
    first, second = row("batch0"), row("batch1")
    assert (first["input_key"], first["batch_id"]) == ("5", second["batch_id"])
    assert first["parent_id"] == second["parent_id"] == root["id"]
    assert "error_message: NUL replaced" in second["repaired"]
    orphan_row = row("garbage_parent")
    assert orphan_row["parent_id"] is None and orphan_row["repaired"].startswith("parent: ")
    assert len(row("long_route")["route_id"].encode()) <= 1024
    assert "route_id: 5000 bytes cut to 1024" in row("long_route")["repaired"]

    card = factflow("lineage", "get", ids["nul"]).stdout
    assert "repaired" in card and "error_message: NUL replaced by U+FFFD" in card

    # The unprintable execution id: its rows are under a deterministic id, not the nil UUID.
    assert odd.id == filed.execution_id != uuid.UUID(int=0)
    filed_row = _json(factflow("lineage", "get", str(filed.id), "-o", "json"))
    assert filed_row["execution_id"] == str(odd.id)
    assert filed_row["repaired"].startswith("execution_id: could not be read (RuntimeError)")
    assert _json(factflow("execution", "get", str(odd.id), "-o", "json"))["total"] == 1

    # The other producer's events: clamped, counted, noted.
    other = _json(factflow("lineage", "get", str(uuid.UUID(bytes=foreign)), "-o", "json"))
    assert other["started_at"].startswith("9999-12-31T23:59:59.999999")
    assert (other["status"], other["children_expected"], other["error"]) == ("completed", 0, None)
    assert (
        "occurred_at: " in other["repaired"] and "children: -4 is not a count" in other["repaired"]
    )
