"""The recorder with no broker at all: nothing raises, nothing waits, and the
events it would send are all in the spool, complete and decodable."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from factflow_lineage.producer import LineageRecorder, LineageRef, RecorderConfig, content_hash
from factflow_lineage.producer._hashing import combine
from factflow_lineage.producer._spool import iter_segment
from factflow_lineage.schemas import decode


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[LineageRecorder]:
    config = RecorderConfig(
        bootstrap=f"127.0.0.1:{closed_port()}",
        topic="offline",
        spool_dir=tmp_path,
        segment_bytes=1024 * 1024,
        spool_max_bytes=8 * 1024 * 1024,
    )
    rec = LineageRecorder(config)
    yield rec
    rec.close(0)


def spooled(recorder: LineageRecorder) -> list[tuple[bytes, dict[str, Any]]]:
    spool = recorder._pump.spool
    assert spool is not None
    return [
        (key, decode(value))
        for seg in list(spool.segments)
        for key, value in iter_segment(seg.path)
    ]


def test_a_chain_is_spooled_with_every_field(recorder: LineageRecorder) -> None:
    with recorder.execution(pipeline="orders", metadata={"env": "test"}) as run:
        with recorder.invocation(
            run, "parse", "csv", input=b"raw", metadata={"rows": 2}, input_key="f.csv"
        ) as first:
            ref1 = first.output({"row": 1})
            ref2 = first.output(b"row 2")
        with recorder.invocation(run.id, "load", "db", parent=ref1.to_header()) as second:
            pass
        with (
            pytest.raises(KeyError),
            recorder.invocation(str(run.id), "load", "db", parent=ref2) as third,
        ):
            raise KeyError("missing")
    events = spooled(recorder)
    kinds = [e["event_type"] for _, e in events]
    assert kinds == [
        "EXECUTION_STARTED",
        "INVOCATION_STARTED",
        "INVOCATION_COMPLETED",
        "INVOCATION_STARTED",
        "INVOCATION_COMPLETED",
        "INVOCATION_STARTED",
        "INVOCATION_FAILED",
        "EXECUTION_FINISHED",
    ]
    assert [e["sequence"] for _, e in events] == list(range(8))
    assert len({e["event_id"] for _, e in events}) == 8
    assert {e["producer_id"] for _, e in events} == {recorder.producer_id}
    now = time.time_ns() // 1000
    assert all(now - 60_000_000 < e["occurred_at"] <= now for _, e in events)

    run_id = run.id.bytes
    key, started = events[1]
    p = started["payload"]
    assert key == first.id.bytes == p["lineage_id"] == p["root_id"]
    assert (p["execution_id"], p["parent_id"], p["route_id"], p["adapter_name"]) == (
        run_id,
        None,
        "parse",
        "csv",
    )
    assert p["input_hash"] == content_hash(b"raw")
    assert (p["metadata"], p["input_key"], p["batch_id"]) == ({"rows": 2}, "f.csv", None)
    done = events[2][1]["payload"]
    assert done["children"] == 2
    assert done["output_hash"] == combine([content_hash({"row": 1}), content_hash(b"row 2")])

    # Children: parent = the first invocation, root (and key) = its root.
    for index, child in ((3, second), (5, third)):
        key, event = events[index]
        assert key == first.id.bytes
        assert event["payload"]["parent_id"] == first.id.bytes
        assert event["payload"]["root_id"] == first.id.bytes
        assert event["payload"]["lineage_id"] == child.id.bytes
    assert ref1 == ref2 == LineageRef(first.id, first.id)

    failed = events[6][1]["payload"]
    assert failed["error_class"] == "KeyError" and failed["error_message"] == "'missing'"
    assert "raise KeyError" in failed["traceback"] and failed["children"] == 0
    assert events[0][1]["payload"]["metadata"] == {"env": "test"}
    # The KeyError was caught inside the execution's block: it completed.
    assert events[7][1]["payload"] == {"execution_id": run_id, "status": "COMPLETED", "error": None}
    assert all(k == run_id for k, e in events if e["event_type"].startswith("EXECUTION"))


def test_calls_return_fast_and_nothing_raises_without_a_broker(recorder: LineageRecorder) -> None:
    run = recorder.execution(pipeline="p")
    worst = 0.0
    for i in range(2000):
        start = time.perf_counter()
        with recorder.invocation(run, "r", "a", input=str(i)) as inv:
            inv.output(b"x")
        worst = max(worst, time.perf_counter() - start)
    assert worst < 0.05
    stats = recorder.stats()
    assert stats.emitted == stats.spooled == 4001
    assert stats.delivered == 0 and stats.dropped == 0 and stats.errors == 0
    assert recorder.flush(0.2) == 4001
    start = time.perf_counter()
    recorder.close(0.5)
    assert time.perf_counter() - start < 3


def test_batch_items_share_a_batch_id_and_end_on_their_own(recorder: LineageRecorder) -> None:
    run = recorder.execution(pipeline="p")
    with (
        pytest.raises(RuntimeError),
        recorder.batch(
            run, "r", "a", inputs=[b"1", b"2", b"3"], input_keys=["a", "b", "c"]
        ) as batch,
    ):
        assert len(batch) == 3
        batch[0].output(b"out")
        batch[1].fail(ValueError("bad row"))
        batch[0].complete()
        raise RuntimeError("the whole batch broke")
    events = [e for _, e in spooled(recorder)][1:]
    starts = [e["payload"] for e in events if e["event_type"] == "INVOCATION_STARTED"]
    assert {s["batch_id"] for s in starts} == {batch.id.bytes}
    assert [s["input_key"] for s in starts] == ["a", "b", "c"]
    assert [s["lineage_id"] for s in starts] == [item.id.bytes for item in batch]
    ends = {
        e["payload"]["lineage_id"]: e for e in events if e["event_type"] != "INVOCATION_STARTED"
    }
    assert ends[batch[0].id.bytes]["event_type"] == "INVOCATION_COMPLETED"
    assert ends[batch[1].id.bytes]["payload"]["error_class"] == "ValueError"
    third = ends[batch[2].id.bytes]
    assert third["event_type"] == "INVOCATION_FAILED"
    assert third["payload"]["error_message"] == "the whole batch broke"


def test_unencodable_metadata_is_coerced_and_counted(recorder: LineageRecorder) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    meta = {"nested": {"a": [1, {"b": 2}]}, "obj": Opaque(), "huge": 10**30, 3: "int key"}
    with recorder.invocation(uuid.uuid4(), "r", "a", metadata=meta):
        pass
    started = spooled(recorder)[0][1]["payload"]
    assert started["metadata"] == {
        "nested": '{"a":[1,{"b":2}]}',
        "obj": "opaque!",
        "huge": str(10**30),
        "3": "int key",
        # Beyond 64 bits: text, as the projector would make it, and noted.
        "factflow.repaired": "metadata['huge']: integer beyond 64 bits recorded as text",
    }
    assert recorder.stats().metadata_coerced == 1
    assert recorder.stats().repaired == 1


def test_megabyte_tracebacks_and_messages_are_truncated(recorder: LineageRecorder) -> None:
    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("M" * 1_000_000)
        deep(n - 1)

    with pytest.raises(ValueError) as caught, recorder.invocation(uuid.uuid4(), "r", "a"):
        deep(50)
    assert len(str(caught.value)) == 1_000_000  # the user's exception is untouched
    failed = spooled(recorder)[1][1]["payload"]
    assert len(failed["traceback"].encode()) <= recorder.config.traceback_max_bytes
    assert len(failed["error_message"].encode()) <= recorder.config.error_message_max_bytes
    assert failed["traceback"].startswith("Traceback (most recent call last)")
    assert "bytes cut" in failed["traceback"] and failed["traceback"].rstrip().endswith("MMMM")


def test_huge_metadata_is_cut_to_fit_an_event(recorder: LineageRecorder) -> None:
    with recorder.invocation(uuid.uuid4(), "r", "a", metadata={"blob": "x" * 2_000_000}):
        pass
    started = spooled(recorder)[0][1]["payload"]
    assert 0 < len(started["metadata"]["blob"]) <= 1024
    assert recorder.stats().dropped == 0


def test_bad_arguments_never_raise(recorder: LineageRecorder) -> None:
    with recorder.invocation("not-a-uuid", 42, None, parent="garbage", input=object()) as inv:  # type: ignore[arg-type]
        ref = inv.output(object())
    assert isinstance(ref, LineageRef)
    stats = recorder.stats()
    assert stats.hash_errors == 2 and stats.dropped == 0
    started = spooled(recorder)[0][1]["payload"]
    assert (started["route_id"], started["adapter_name"]) == ("42", "None")
    assert started["parent_id"] is None and started["input_hash"] is None


def test_a_closed_recorder_is_a_counting_no_op(recorder: LineageRecorder) -> None:
    recorder.close(0)
    with recorder.execution(pipeline="p") as run, recorder.invocation(run, "r", "a") as inv:
        inv.output(b"x")
    assert recorder.stats().dropped == 4
    recorder.close()  # twice: still fine


def test_user_exceptions_propagate_unchanged(recorder: LineageRecorder) -> None:
    class Mine(Exception):
        pass

    error = Mine("boom")
    with (
        pytest.raises(Mine) as caught,
        recorder.execution(pipeline="p"),
        recorder.invocation(uuid.uuid4(), "r", "a"),
    ):
        raise error
    assert caught.value is error


def test_cancellation_is_recorded_as_cancelled(recorder: LineageRecorder) -> None:
    import asyncio

    async def work() -> None:
        with recorder.invocation(uuid.uuid4(), "r", "a"):
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(work())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    with recorder.invocation(uuid.uuid4(), "r", "a") as inv:
        inv.cancel("not needed")
    ends = [e for _, e in spooled(recorder) if e["event_type"] == "INVOCATION_CANCELLED"]
    assert [e["payload"]["reason"] for e in ends] == [
        "asyncio.exceptions.CancelledError",
        "not needed",
    ]


def test_threads_share_one_recorder(recorder: LineageRecorder) -> None:
    run = recorder.execution(pipeline="p")

    def work(n: int) -> None:
        for i in range(n):
            with recorder.invocation(run, "r", "a", input=str(i)) as inv:
                inv.output(b"x")

    threads = [threading.Thread(target=work, args=(300,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = [e for _, e in spooled(recorder)]
    assert len(events) == 1 + 8 * 300 * 2
    # One gapless sequence, unique event ids, every start with its end.
    assert sorted(e["sequence"] for e in events) == list(range(len(events)))
    assert len({e["event_id"] for e in events}) == len(events)
    started = {
        e["payload"]["lineage_id"] for e in events if e["event_type"] == "INVOCATION_STARTED"
    }
    ended = {
        e["payload"]["lineage_id"] for e in events if e["event_type"] == "INVOCATION_COMPLETED"
    }
    assert started == ended and len(started) == 2400


def test_a_full_spool_is_counted_and_never_raises(tmp_path: Path) -> None:
    config = RecorderConfig(
        bootstrap=f"127.0.0.1:{closed_port()}",
        topic="offline",
        spool_dir=tmp_path,
        segment_bytes=64 * 1024,
        spool_max_bytes=128 * 1024,
        queue_max_messages=1000,
    )
    with LineageRecorder(config) as rec:
        for i in range(3000):
            with rec.invocation(uuid.uuid4(), "r", "a", input=str(i)):
                pass
        stats = rec.stats()
        rec.close(0)
        after = rec.stats()
    # Two 64 KiB segments hold a few hundred events; the next ones go to
    # librdkafka's queue without a spool copy until it is full (1000 messages,
    # spooled ones included), the rest is dropped: all counted.
    assert stats.emitted == 6000
    assert 0 < stats.spooled < 1000
    assert stats.unspooled == stats.emitted - stats.spooled
    # Nothing was delivered: what is neither queued (librdkafka holds exactly
    # its 1000-message bound) nor waiting in the spool was dropped. queue_depth
    # is len(producer), which also counts librdkafka's in-flight protocol
    # requests, so it may exceed the message count by one or two.
    assert stats.emitted - stats.dropped - stats.backlog == 1000
    assert 1000 <= stats.queue_depth <= 1010
    assert stats.spool_bytes <= 128 * 1024
    assert stats.errors == 0
    # Closed without a broker: the unspooled ones in the queue are lost too,
    # the spooled ones stay on disk for the next recorder.
    assert after.dropped == stats.unspooled


def test_without_a_spool_what_is_not_delivered_at_close_is_counted_lost(tmp_path: Path) -> None:
    config = RecorderConfig(bootstrap=f"127.0.0.1:{closed_port()}", topic="t", spool_dir=None)
    with LineageRecorder(config) as rec:
        for _ in range(100):
            with rec.invocation(uuid.uuid4(), "r", "a"):
                pass
        rec.close(0.1)
        stats = rec.stats()
    assert (stats.emitted, stats.spooled, stats.delivered, stats.dropped) == (200, 0, 0, 200)
    assert list(tmp_path.iterdir()) == []


def test_periodic_fsync_keeps_working(tmp_path: Path) -> None:
    config = RecorderConfig(
        bootstrap=f"127.0.0.1:{closed_port()}",
        topic="t",
        spool_dir=tmp_path,
        segment_bytes=64 * 1024,
        fsync_interval_s=0.01,
    )
    with LineageRecorder(config) as rec:
        for i in range(2000):  # several segments: sealed ones are synced too
            with rec.invocation(uuid.uuid4(), "r", "a", input=str(i)):
                pass
            if i % 500 == 0:
                time.sleep(0.05)
        stats = rec.stats()
        assert len(spooled(rec)) == 4000
        rec.close(0)
    assert stats.errors == 0 and stats.spooled == 4000


def test_a_forked_child_records_into_a_spool_of_its_own(
    recorder: LineageRecorder, tmp_path: Path
) -> None:
    with recorder.invocation(uuid.uuid4(), "r", "a"):
        pass
    parent_dir = recorder._pump.spool.dir if recorder._pump.spool else None
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a threaded process is risky: that
        # risk is what this test is about.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: record, then leave without closing anything
        try:
            fresh = recorder.stats()
            with recorder.invocation(uuid.uuid4(), "r", "child"):
                pass
            stats = recorder.stats()
            ok = (
                fresh.emitted == 0
                and (stats.emitted, stats.spooled, stats.dropped) == (2, 2, 0)
                and recorder._pump.spool is not None
                and recorder._pump.spool.dir != parent_dir
                and recorder.producer_id.hex() == recorder._pump.spool.dir.name
            )
            os._exit(0 if ok else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(spooled(recorder)) == 2  # the parent's two events, nothing of the child
    [child_dir] = [d for d in tmp_path.iterdir() if d != parent_dir]
    events = [decode(v) for seg in sorted(child_dir.glob("*.seg")) for _, v in iter_segment(seg)]
    # The child's events wait in its own directory for the next recorder (or
    # `factflow spool drain`): as a fresh producer, sequence from 0.
    assert [(e["payload"]["adapter_name"], e["sequence"]) for e in events[:1]] == [("child", 0)]
    assert len(events) == 2 and events[0]["producer_id"].hex() == child_dir.name


def assert_exits_cleanly(pid: int, hung: str, timeout: float = 30.0) -> None:
    """Wait for the child ``pid``: exit 0, or fail (killing it if it hangs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(hung)


def test_a_forked_child_records_though_the_parent_held_the_recorders_locks(
    recorder: LineageRecorder,
) -> None:
    # As if other parent threads were inside the recorder at the fork: a lock
    # held then is held forever in the child, unless the child makes its own.
    locks = [recorder._counts_lock, recorder._log._lock, recorder._pump.lock]
    for lock in locks:
        lock.acquire()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                # An execution id that is no UUID (logged, rate-limited) and
                # metadata to coerce (counted): each under its lock.
                with recorder.invocation("run-1", "r", "a", metadata={"x": object()}):
                    pass
                stats = recorder.stats()
                ok = (stats.spooled, stats.metadata_coerced, stats.dropped) == (2, 1, 0)
                os._exit(0 if ok else 1)
            finally:
                os._exit(2)
    finally:
        for lock in locks:
            lock.release()
    assert_exits_cleanly(pid, "the forked child hung on a lock held at the fork")


def test_metadata_values_that_refuse_comparison_are_coerced(recorder: LineageRecorder) -> None:
    class ArrayLike:  # like a numpy array: == does not give a bool
        def __eq__(self, other: object) -> bool:
            raise ValueError("truth value of an array is ambiguous")

        __hash__ = None  # type: ignore[assignment]

        def __str__(self) -> str:
            return "[1 2 3]"

    with recorder.invocation(uuid.uuid4(), "r", "a", metadata={"a": ArrayLike(), "n": 1}):
        pass
    assert spooled(recorder)[0][1]["payload"]["metadata"] == {"a": "[1 2 3]", "n": 1}
    stats = recorder.stats()
    assert stats.metadata_coerced == 1 and stats.errors == 0 and stats.dropped == 0


def test_a_forked_child_never_destroys_a_producer_of_the_parent(tmp_path: Path) -> None:
    # A closed recorder's pump and producer are garbage in a reference cycle
    # (the producer holds callbacks bound to its pump) until the parent's
    # collector runs. If a forked child's collector runs first, destroying
    # that librdkafka handle there, whose threads stayed in the parent,
    # crashed the child (SIGSEGV) or hung it.
    config = RecorderConfig(
        bootstrap=f"127.0.0.1:{closed_port()}", topic="offline", spool_dir=tmp_path
    )
    gc.disable()  # so that the parent does not collect them first
    try:
        for _ in range(3):
            rec = LineageRecorder(config)
            with rec.invocation(uuid.uuid4(), "r", "a"):
                pass
            rec.close(0)
        del rec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                found = gc.collect()
                os._exit(0 if found else 1)
            finally:
                os._exit(2)
    finally:
        gc.enable()
    assert_exits_cleanly(pid, "the forked child hung destroying the parent's producer")
