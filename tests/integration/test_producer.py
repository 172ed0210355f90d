"""The recorder against the real broker: what arrives, and what survives."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from test_producer_support import Received, closed_port, consume, recorder, wait_recovered
from typer.testing import CliRunner

from factflow_lineage.producer import LineageRef, content_hash
from factflow_lineage.producer._cli import spool_app
from factflow_lineage.producer._hashing import combine
from factflow_lineage.provisioning import KAFKA_LOGGER

pytestmark = pytest.mark.integration


def by_kind(events: list[Received], kind: str) -> list[Received]:
    return [e for e in events if e.kind == kind]


def test_a_full_chain_arrives_with_its_fields_and_keys(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(partitions=6)
    with recorder(kafka_bootstrap, topic, tmp_path) as rec:
        with rec.execution(pipeline="orders", metadata={"git": "abc"}) as run:
            with rec.invocation(run, "read", "csv", input=b"file", input_key="a.csv") as root:
                refs = [root.output({"row": i}) for i in range(3)]
            for i, ref in enumerate(refs):
                # Across a process boundary the ref travels as a header.
                header = ref.to_header()
                with rec.invocation(
                    run.id, "parse", "json", parent=header, input={"row": i}
                ) as mid:
                    leaf_ref = mid.output(b"parsed")
                with (
                    pytest.raises(ZeroDivisionError),
                    rec.invocation(str(run.id), "load", "db", parent=leaf_ref),
                ):
                    _ = 1 / 0
        assert rec.flush(30) == 0
        stats = rec.stats()
    assert stats.delivered == stats.emitted == 2 + 2 + 3 * 4
    assert stats.dropped == stats.delivery_errors == 0

    events = consume(kafka_bootstrap, topic, count=stats.emitted)
    assert len(events) == stats.emitted
    # One chain, one key, one partition, in order.
    chain = [e for e in events if e.kind.startswith("INVOCATION")]
    assert {e.key for e in chain} == {root.id.bytes}
    assert len({e.partition for e in chain}) == 1
    assert [e.event["sequence"] for e in sorted(chain, key=lambda e: e.offset)] == sorted(
        e.event["sequence"] for e in chain
    )
    executions = [e for e in events if e.kind.startswith("EXECUTION")]
    assert {e.key for e in executions} == {run.id.bytes}

    starts = {e.payload["lineage_id"]: e.payload for e in by_kind(events, "INVOCATION_STARTED")}
    assert len(starts) == 7
    first = starts[root.id.bytes]
    assert first["parent_id"] is None and first["root_id"] == root.id.bytes
    assert (first["route_id"], first["adapter_name"], first["input_key"]) == (
        "read",
        "csv",
        "a.csv",
    )
    assert first["input_hash"] == content_hash(b"file")
    mids = [p for p in starts.values() if p["route_id"] == "parse"]
    assert len(mids) == 3 and all(p["parent_id"] == root.id.bytes for p in mids)
    assert {p["input_hash"] for p in mids} == {content_hash({"row": i}) for i in range(3)}
    leaves = [p for p in starts.values() if p["route_id"] == "load"]
    assert {p["parent_id"] for p in leaves} == {p["lineage_id"] for p in mids}
    assert all(p["root_id"] == root.id.bytes for p in starts.values())
    assert {p["execution_id"] for p in starts.values()} == {run.id.bytes}

    completed = {
        e.payload["lineage_id"]: e.payload for e in by_kind(events, "INVOCATION_COMPLETED")
    }
    assert completed[root.id.bytes]["children"] == 3
    assert completed[root.id.bytes]["output_hash"] == combine(
        [content_hash({"row": i}) for i in range(3)]
    )
    assert all(completed[p["lineage_id"]]["children"] == 1 for p in mids)
    failed = by_kind(events, "INVOCATION_FAILED")
    assert len(failed) == 3
    assert {e.payload["error_class"] for e in failed} == {"ZeroDivisionError"}
    assert all("1 / 0" in e.payload["traceback"] for e in failed)
    finished = by_kind(events, "EXECUTION_FINISHED")[0].payload
    assert finished["status"] == "COMPLETED"
    assert by_kind(events, "EXECUTION_STARTED")[0].payload["metadata"] == {"git": "abc"}
    assert refs[0] == LineageRef(root.id, root.id)


def test_broker_down_from_the_start_then_a_recorder_recovers_everything(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic()
    nowhere = f"127.0.0.1:{closed_port()}"
    ids = []
    with recorder(nowhere, topic, tmp_path, close_timeout=1) as down:
        worst = 0.0
        run = down.execution(pipeline="p")
        for i in range(3000):
            start = time.perf_counter()
            with down.invocation(run, "r", "a", input=str(i), metadata={"i": i}) as inv:
                inv.output(b"x")
            worst = max(worst, time.perf_counter() - start)
            ids.append(inv.id.bytes)
        stats = down.stats()
        start = time.perf_counter()
    closing = time.perf_counter() - start
    assert worst < 0.05, f"a call took {worst * 1000:.1f} ms without a broker"
    assert closing < down.config.close_timeout + 2
    assert stats.emitted == stats.spooled == 6001 and stats.delivered == 0
    assert stats.dropped == 0 and stats.errors == 0

    with recorder(kafka_bootstrap, topic, tmp_path) as up:
        wait_recovered(up)
        assert up.stats().recovered == 6001
    assert list(tmp_path.iterdir()) == []  # delivered spools are removed
    events = consume(kafka_bootstrap, topic, count=6001)
    started = [e.payload["lineage_id"] for e in by_kind(events, "INVOCATION_STARTED")]
    assert sorted(started) == sorted(ids)


def test_a_megabyte_traceback_arrives_truncated(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic()

    def recurse(n: int) -> None:
        if n == 0:
            raise RuntimeError("start of message " + "x" * 1_000_000 + " end of message")
        recurse(n - 1)

    with recorder(kafka_bootstrap, topic, tmp_path) as rec:
        with pytest.raises(RuntimeError), rec.invocation(uuid.uuid4(), "r", "a"):
            recurse(200)
        assert rec.flush(30) == 0
        assert rec.stats().delivery_errors == 0
    failed = by_kind(consume(kafka_bootstrap, topic, count=2), "INVOCATION_FAILED")[0].payload
    trace = failed["traceback"]
    assert len(trace.encode()) <= rec.config.traceback_max_bytes
    assert trace.startswith("Traceback (most recent call last):")
    assert "bytes cut" in trace and trace.rstrip().endswith("end of message")
    message = failed["error_message"]
    assert message.startswith("start of message") and message.endswith("end of message")
    assert len(message.encode()) <= rec.config.error_message_max_bytes


def test_metadata_avro_cannot_encode_arrives_coerced(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic()
    meta = {
        "nested": {"z": 1, "a": [1, 2, {"k": None}]},
        "when": uuid.UUID(int=7),
        "big": 2**64,
        "ok": 1.5,
        ("tuple", "key"): {1, 2},
    }
    with recorder(kafka_bootstrap, topic, tmp_path) as rec:
        with rec.invocation(uuid.uuid4(), "r", "a", metadata=meta):
            pass
        with rec.execution(pipeline="p", metadata={"cfg": {"retries": 3}}):
            pass
        assert rec.flush(30) == 0
        stats = rec.stats()
    assert stats.metadata_coerced == 2 and stats.repaired == 1 and stats.dropped == 0
    events = consume(kafka_bootstrap, topic, count=4)
    started = by_kind(events, "INVOCATION_STARTED")[0].payload["metadata"]
    assert started == {
        "nested": '{"a":[1,2,{"k":null}],"z":1}',
        "when": str(uuid.UUID(int=7)),
        "big": str(2**64),
        "ok": 1.5,
        "('tuple', 'key')": "[1,2]",
        # A number JSON cannot hold exactly is kept as text, and says so.
        "factflow.repaired": "metadata['big']: integer beyond 64 bits recorded as text",
    }
    assert by_kind(events, "EXECUTION_STARTED")[0].payload["metadata"] == {"cfg": '{"retries":3}'}


def test_spool_drain_fails_in_one_line_when_kafka_is_unreachable(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{closed_port()}"
    with (
        recorder(nowhere, "some.topic", tmp_path, close_timeout=0) as rec,
        rec.invocation(uuid.uuid4(), "r", "a"),
    ):
        pass
    result = CliRunner().invoke(
        spool_app, ["drain", "--spool-dir", str(tmp_path), "--timeout", "2", "--bootstrap", nowhere]
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("factflow: error: spool drain: 1 of 1 spools")
    assert nowhere in lines[0]
    assert len(list(tmp_path.iterdir())) == 1  # still there for a later drain


def test_spool_drain_with_nothing_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        spool_app, ["drain", "--spool-dir", str(tmp_path), "--timeout", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "nothing to re-send" in result.stdout


def test_a_full_queue_spills_to_the_spool_and_catches_up(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic()
    # A tiny librdkafka queue and small segments: the recorder spends most of
    # this test in backlog mode, rotating segments faster than spares are made.
    rec = recorder(
        kafka_bootstrap,
        topic,
        tmp_path,
        queue_max_messages=200,
        segment_bytes=256 * 1024,
        spool_max_bytes=256 * 1024 * 1024,
    )
    ids = []
    worst = 0.0
    for i in range(10_000):
        start = time.perf_counter()
        with rec.invocation(uuid.uuid4(), "r", "a", input=str(i)) as inv:
            pass
        worst = max(worst, time.perf_counter() - start)
        ids.append(inv.id.bytes)
    during = rec.stats()
    assert rec.flush(60) == 0
    stats = rec.stats()
    rec.close()
    assert during.backlog > 0  # it did spill
    assert stats.delivered == stats.emitted == 20_000 and stats.dropped == 0, stats
    # A stall detector, not a latency figure (the benchmarks measure that):
    # no call waits for the broker, so none comes near a second, however
    # busy the machine is.
    assert worst < 1.0, f"a call took {worst * 1000:.0f} ms"
    assert list(tmp_path.iterdir()) == []  # every segment acknowledged and removed
    events = consume(kafka_bootstrap, topic, count=20_000)
    assert sorted(e.payload["lineage_id"] for e in by_kind(events, "INVOCATION_STARTED")) == sorted(
        ids
    )


def test_events_the_broker_refuses_are_counted_logged_and_let_go(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"test.refuse.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap, "logger": KAFKA_LOGGER})
    config = {"max.message.bytes": "200"}  # smaller than any lineage event
    admin.create_topics([NewTopic(topic, 1, config=config)])[topic].result(timeout=30)
    try:
        with (
            caplog.at_level(logging.ERROR, logger="factflow_lineage.producer"),
            recorder(kafka_bootstrap, topic, tmp_path) as rec,
        ):
            for _ in range(10):
                with rec.invocation(uuid.uuid4(), "r", "a"):
                    pass
            assert rec.flush(30) == 0
            stats = rec.stats()
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)
    assert stats.delivered == 0
    assert stats.delivery_errors == stats.dropped == stats.emitted == 20
    refused = [r for r in caplog.records if "refused by Kafka" in r.getMessage()]
    # Rate-limited: one line for twenty failures, and once they stop, one
    # summary with how many it stands for (none is hidden).
    assert len(refused) == 2
    assert refused[1].getMessage().endswith("(19 times since the last report; none since)")
    assert list(tmp_path.iterdir()) == []  # nothing kept for a re-send that cannot work
