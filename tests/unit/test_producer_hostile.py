"""Whatever the caller passes, the recorder records the start with every field
it could take, notes what it could not (``factflow.repaired``) and counts it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from factflow_lineage._repair import NOTE_KEY, split_note
from factflow_lineage.producer import LineageRecorder, RecorderConfig, content_hash
from factflow_lineage.producer._ids import unprintable_id
from tests.unit.test_producer_offline import closed_port, spooled

U = "\ufffd"


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


def events(recorder: LineageRecorder) -> list[dict[str, Any]]:
    return [event for _, event in spooled(recorder)]


def starts(recorder: LineageRecorder) -> list[dict[str, Any]]:
    return [e["payload"] for e in events(recorder) if e["event_type"] == "INVOCATION_STARTED"]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class ItemsRaise(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("items() broke")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("iteration broke")


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("make_input", "error"),
    [
        (lambda: "name-\udcff.txt", "lone surrogates"),  # what os.fsdecode returns
        (lambda: _deep(100_000), "nested too deep"),
        (lambda: ItemsRaise(a=1), "RuntimeError"),
    ],
)
def test_an_input_that_cannot_be_hashed_still_records_the_start(
    recorder: LineageRecorder, make_input: Any, error: str
) -> None:
    parent = recorder.invocation(uuid.uuid4(), "r", "first")
    parent.complete()
    run = uuid.uuid4()
    with recorder.invocation(
        run, "route", "adapter", input=make_input(), parent=parent.ref, input_key="k"
    ) as inv:
        inv.output(b"x")
    started = starts(recorder)[1]
    assert started["lineage_id"] == inv.id.bytes
    assert (started["route_id"], started["adapter_name"], started["input_key"]) == (
        "route",
        "adapter",
        "k",
    )
    assert (started["parent_id"], started["execution_id"]) == (parent.id.bytes, run.bytes)
    assert started["input_hash"] is None
    assert started["metadata"][NOTE_KEY].startswith("input_hash: the input could not be hashed")
    assert error in started["metadata"][NOTE_KEY]
    stats = recorder.stats()
    assert (stats.repaired, stats.hash_errors, stats.dropped, stats.errors) == (1, 1, 0, 0)


def test_content_hash_raises_type_error_for_what_it_cannot_hash() -> None:
    with pytest.raises(TypeError, match="lone surrogate"):
        content_hash("a\udcffb")
    with pytest.raises(TypeError, match="nested too deep"):
        content_hash(_deep(100_000))


def test_an_input_hash_that_is_not_a_string_is_recorded_as_text(
    recorder: LineageRecorder,
) -> None:
    with recorder.invocation(uuid.uuid4(), "r", "a", input_hash=12345):  # type: ignore[arg-type]
        pass
    started = starts(recorder)[0]
    assert started["input_hash"] == "12345"
    assert started["metadata"][NOTE_KEY] == "input_hash: an int given, recorded as its text"
    assert recorder.stats().repaired == 1 and recorder.stats().dropped == 0


def test_a_batch_with_input_keys_that_are_not_strings_is_recorded_whole(
    recorder: LineageRecorder,
) -> None:
    with recorder.batch(
        uuid.uuid4(), "r", "embedder", inputs=["a", "b"], input_keys=[5, None]
    ) as b:  # type: ignore[list-item]
        pass
    got = starts(recorder)
    assert [s["lineage_id"] for s in got] == [b[0].id.bytes, b[1].id.bytes]
    assert [s["input_key"] for s in got] == ["5", None]
    assert got[0]["metadata"][NOTE_KEY] == "input_key: an int given, recorded as its text"
    assert NOTE_KEY not in got[1]["metadata"]
    assert [e["event_type"] for e in events(recorder)].count("INVOCATION_COMPLETED") == 2


def test_a_batch_whose_inputs_raise_midway_keeps_the_items_taken(
    recorder: LineageRecorder,
) -> None:
    def inputs() -> Iterator[str]:
        yield "one"
        yield "two"
        raise OSError("disk went away")

    with recorder.batch(uuid.uuid4(), "r", "a", inputs=inputs()) as b:
        pass
    assert len(b) == 2
    got = starts(recorder)
    assert [s["lineage_id"] for s in got] == [item.id.bytes for item in b]
    assert all(
        "inputs: reading them raised OSError after 2" in s["metadata"][NOTE_KEY] for s in got
    )


def test_an_execution_id_whose_str_raises_is_filed_under_a_deterministic_id(
    recorder: LineageRecorder,
) -> None:
    first, second = Unprintable(), Unprintable()
    with recorder.invocation(first, "r", "a") as one, recorder.invocation(second, "r", "a") as two:
        pass
    expected = unprintable_id(first)
    assert expected == unprintable_id(second) != bytes(16)
    assert uuid.UUID(bytes=expected).version == 5
    got = starts(recorder)
    assert [s["execution_id"] for s in got] == [expected, expected]
    assert one.execution_id.bytes == expected and two.execution_id.bytes == expected
    note = got[0]["metadata"][NOTE_KEY]
    assert note.startswith("execution_id: could not be read (RuntimeError)")
    assert str(uuid.UUID(bytes=expected)) in note
    ends = [e for e in events(recorder) if e["event_type"] == "INVOCATION_COMPLETED"]
    assert [e["payload"]["execution_id"] for e in ends] == [expected, expected]


def test_an_execution_with_an_unprintable_id_is_recorded_and_noted(
    recorder: LineageRecorder,
) -> None:
    with recorder.execution("p", execution_id=Unprintable(), replay_of=Unprintable()) as run:
        pass
    assert run.id.bytes == unprintable_id(Unprintable())
    started = events(recorder)[0]
    assert started["event_type"] == "EXECUTION_STARTED"
    assert started["payload"]["execution_id"] == run.id.bytes
    assert started["payload"]["replay_of"] is None
    note = started["payload"]["metadata"][NOTE_KEY]
    assert "execution_id: could not be read" in note and "replay_of: could not be read" in note


@pytest.mark.parametrize(
    "parent", ["garbage", b"\x00" * 7, 42, Unprintable(), "v1:zz:yy", object()]
)
def test_a_garbage_parent_records_a_root_with_a_note(
    recorder: LineageRecorder, parent: Any
) -> None:
    with recorder.invocation(uuid.uuid4(), "r", "a", parent=parent, metadata={"m": 1}) as inv:
        pass
    started = starts(recorder)[0]
    assert started["lineage_id"] == inv.id.bytes
    assert started["parent_id"] is None and started["root_id"] == inv.id.bytes
    assert started["metadata"]["m"] == 1
    assert started["metadata"][NOTE_KEY].startswith("parent: ")
    assert started["metadata"][NOTE_KEY].endswith("recorded as a chain root")
    assert recorder.stats().repaired == 1 and recorder.stats().errors == 0


def test_metadata_whose_items_raise_is_noted_and_the_start_kept(
    recorder: LineageRecorder,
) -> None:
    with recorder.invocation(uuid.uuid4(), "route", "a", metadata=ItemsRaise(a=1)):
        pass
    started = starts(recorder)[0]
    assert started["route_id"] == "route"
    assert started["metadata"] == {
        NOTE_KEY: "metadata: could not be read (RuntimeError); recorded without it"
    }


def test_lone_surrogates_are_replaced_and_noted_in_a_start(recorder: LineageRecorder) -> None:
    with recorder.invocation(
        uuid.uuid4(),
        "route\udc80",
        "a",
        input_key="/data/\udcff.csv",
        metadata={"path\udc81": "x\ud800", "n": float("nan"), "big": 10**30},
    ):
        pass
    started = starts(recorder)[0]
    assert (started["route_id"], started["input_key"]) == (f"route{U}", f"/data/{U}.csv")
    meta = started["metadata"]
    assert (meta[f"path{U}"], meta["n"], meta["big"]) == (f"x{U}", "NaN", str(10**30))
    assert meta[NOTE_KEY] == (
        "route_id: lone surrogates replaced by U+FFFD; "
        "input_key: lone surrogates replaced by U+FFFD; "
        f"metadata key 'path{U}': lone surrogates replaced by U+FFFD; "
        f"metadata['path{U}']: lone surrogates replaced by U+FFFD; "
        "metadata['n']: NaN recorded as text; "
        "metadata['big']: integer beyond 64 bits recorded as text"
    )
    assert recorder.stats().repaired == 1


def test_a_failure_with_lone_surrogates_notes_them_on_its_traceback(
    recorder: LineageRecorder,
) -> None:
    with pytest.raises(FileNotFoundError), recorder.invocation(uuid.uuid4(), "r", "a"):
        raise FileNotFoundError("no such file: /in/\udcff.csv")
    failed = events(recorder)[1]["payload"]
    assert "/in/\ufffd.csv" in failed["error_message"]
    traceback, note = split_note(failed["traceback"])
    assert traceback is not None and traceback.startswith("Traceback")
    assert note == (
        "error_message: lone surrogates replaced by U+FFFD; "
        "traceback: lone surrogates replaced by U+FFFD"
    )
    assert recorder.stats().repaired == 1 and recorder.stats().dropped == 0


def test_nul_travels_to_the_projector_untouched(recorder: LineageRecorder) -> None:
    # The contract carries NUL; the projector repairs it where the tables
    # cannot hold it. The recorder's hot path does not look for it.
    with pytest.raises(ValueError), recorder.invocation(uuid.uuid4(), "r\x00", "a"):
        raise ValueError("bad \x00 byte")
    started, failed = (e["payload"] for e in events(recorder))
    assert started["route_id"] == "r\x00" and failed["error_message"] == "bad \x00 byte"
    assert recorder.stats().repaired == 0


def test_a_cancel_reason_and_an_execution_error_of_any_type_are_recorded(
    recorder: LineageRecorder,
) -> None:
    run = recorder.execution("p")
    inv = recorder.invocation(run, "r", "a")
    inv.cancel(Unprintable())  # type: ignore[arg-type]
    run.cancel(42)  # type: ignore[arg-type]
    kinds = [e["event_type"] for e in events(recorder)]
    assert kinds == [
        "EXECUTION_STARTED",
        "INVOCATION_STARTED",
        "INVOCATION_CANCELLED",
        "EXECUTION_FINISHED",
    ]
    assert events(recorder)[3]["payload"]["error"] == "42"


def test_an_output_that_cannot_be_hashed_is_still_counted(recorder: LineageRecorder) -> None:
    with recorder.invocation(uuid.uuid4(), "r", "a") as inv:
        inv.output("x\udcff")
        inv.output(_deep(100_000))
        inv.output(content_hash="sha256:é\udcff")
        inv.output(b"fine")
    done = events(recorder)[1]["payload"]
    assert done["children"] == 4
    assert done["output_hash"] is not None
    assert recorder.stats().hash_errors == 2 and recorder.stats().errors == 0
