"""The planner repairs what the tables cannot hold, and notes it; it rejects only
events whose shape does not match their type."""

from __future__ import annotations

import random
from typing import Any

import pytest

from factflow_lineage._repair import (
    INDEXED_TEXT_BYTES,
    MAX_INT4,
    MAX_MICROS,
    MIN_MICROS,
    NOTE_KEY,
    append_note,
)
from factflow_lineage.consumer._planner import PG_EPOCH_MICROS, invalid_reason, plan
from tests.support.events import T0, EventBuilder, num_uid
from tests.unit.test_planner import executions, rows

LID = num_uid(1, 0xA)
PARENT = num_uid(2, 0xA)
XID = num_uid(1, 0xE)
U = "\ufffd"


def _builder(seed: int = 1) -> EventBuilder:
    return EventBuilder(random.Random(seed))


@pytest.mark.parametrize("field", ["route_id", "adapter_name", "input_hash", "input_key"])
def test_nul_in_a_start_text_is_replaced_and_noted(field: str) -> None:
    b = _builder()
    start = b.started(lineage_id=LID, execution_id=XID, at=T0, parent_id=PARENT, root_id=PARENT)
    start["payload"][field] = "a\x00b"
    p = plan([start])
    assert p.rejected == ()
    row = rows(p)[LID]
    assert row[field] == f"a{U}b"
    # Nothing else of the start is lost: parent, execution, route, adapter.
    assert (row["parent_id"], row["execution_id"], row["start_event_id"]) == (
        PARENT,
        XID,
        start["event_id"],
    )
    assert row["metadata"][NOTE_KEY] == f"{field}: NUL replaced by U+FFFD"
    assert invalid_reason(start) is None


def test_nul_in_metadata_keys_and_values_is_replaced_and_noted() -> None:
    b = _builder(2)
    start = b.started(
        lineage_id=LID,
        execution_id=XID,
        at=T0,
        # "k\ufffd" exists already: the repaired key must not overwrite it.
        metadata={"k\x00": 1, f"k{U}": 2, "v": "x\x00y", "ok": "fine"},
    )
    row = rows(plan([start]))[LID]
    meta = row["metadata"]
    assert (meta[f"k{U}{U}"], meta[f"k{U}"], meta["v"], meta["ok"]) == (1, 2, f"x{U}y", "fine")
    assert meta[NOTE_KEY] == (
        f"metadata key 'k{U}{U}': NUL replaced by U+FFFD; metadata['v']: NUL replaced by U+FFFD"
    )


def test_non_finite_numbers_become_text_with_a_note() -> None:
    b = _builder(3)
    start = b.started(
        lineage_id=LID,
        execution_id=XID,
        at=T0,
        metadata={"a": float("nan"), "b": float("inf"), "c": float("-inf"), "d": 1.5},
    )
    meta = rows(plan([start]))[LID]["metadata"]
    assert meta == {
        "a": "NaN",
        "b": "Infinity",
        "c": "-Infinity",
        "d": 1.5,
        NOTE_KEY: "metadata['a']: NaN recorded as text; metadata['b']: Infinity recorded as "
        "text; metadata['c']: -Infinity recorded as text",
    }


def test_a_producer_note_is_kept_and_the_planner_note_follows_it() -> None:
    b = _builder(4)
    start = b.started(
        lineage_id=LID, execution_id=XID, at=T0, route_id="r\x00", metadata={NOTE_KEY: "early"}
    )
    meta = rows(plan([start]))[LID]["metadata"]
    assert meta[NOTE_KEY] == "early; route_id: NUL replaced by U+FFFD"


def test_a_clean_start_has_no_note() -> None:
    b = _builder(5)
    start = b.started(lineage_id=LID, execution_id=XID, at=T0, metadata={"a": 1})
    assert rows(plan([start]))[LID]["metadata"] == {"a": 1}


def test_long_route_and_adapter_are_cut_to_fit_their_indexes() -> None:
    b = _builder(6)
    start = b.started(
        lineage_id=LID, execution_id=XID, at=T0, route_id="r" * 5000, adapter_name="é" * 600
    )
    row = rows(plan([start]))[LID]
    assert len(row["route_id"].encode()) <= INDEXED_TEXT_BYTES
    assert len(row["adapter_name"].encode()) <= INDEXED_TEXT_BYTES
    assert row["route_id"].startswith("r" * 400) and "bytes cut" in row["route_id"]
    assert row["metadata"][NOTE_KEY] == (
        "route_id: 5000 bytes cut to 1024; adapter_name: 1200 bytes cut to 1024"
    )


@pytest.mark.parametrize(
    ("at", "clamped"), [(MAX_MICROS + 1, MAX_MICROS), (MIN_MICROS - 5, MIN_MICROS)]
)
def test_a_start_out_of_years_1_9999_is_clamped_and_noted(at: int, clamped: int) -> None:
    b = _builder(7)
    start = b.started(lineage_id=LID, execution_id=XID, at=at)
    p = plan([start])
    assert p.rejected == ()
    row = rows(p)[LID]
    assert row["started_at"] == clamped
    assert row["metadata"][NOTE_KEY].startswith(f"occurred_at: {at} µs is outside years 1-9999")


def test_nul_in_a_failure_is_replaced_and_noted_in_its_error() -> None:
    b = _builder(8)
    start = b.started(lineage_id=LID, execution_id=XID, at=T0)
    failed = b.failed(
        lineage_id=LID,
        execution_id=XID,
        at=T0 + 5,
        error_class="a.Bad\x00Error",
        error_message="bad \x00 byte",
        traceback="Traceback\x00",
    )
    p = plan([start, failed])
    assert p.rejected == ()
    row = rows(p)[LID]
    assert row["status"] == "failed"
    assert row["error"] == {
        "class": f"a.Bad{U}Error",
        "message": f"bad {U} byte",
        "traceback": f"Traceback{U}",
        "repaired": "error_class: NUL replaced by U+FFFD; error_message: NUL replaced by "
        "U+FFFD; traceback: NUL replaced by U+FFFD",
    }
    # The start's fields are untouched and carry no note.
    assert NOTE_KEY not in row["metadata"]


def test_a_recorder_note_at_the_end_of_a_traceback_moves_into_the_error() -> None:
    b = _builder(9)
    failed = b.failed(
        lineage_id=LID,
        execution_id=XID,
        at=T0,
        error_message=f"file {U}",
        traceback=append_note("Traceback ...\nOSError: x", "error_message: lone surrogates ..."),
    )
    row = rows(plan([failed]))[LID]
    assert row["error"]["traceback"] == "Traceback ...\nOSError: x"
    assert row["error"]["repaired"] == "error_message: lone surrogates ..."


def test_a_note_line_alone_as_traceback_leaves_none() -> None:
    b = _builder(10)
    failed = b.failed(lineage_id=LID, execution_id=XID, at=T0, traceback=append_note(None, "x: y"))
    error = rows(plan([failed]))[LID]["error"]
    assert (error["traceback"], error["repaired"]) == (None, "x: y")


def test_completed_and_cancelled_rows_keep_their_note_in_the_error_column() -> None:
    b = _builder(11)
    other = num_uid(3, 0xA)
    completed = b.completed(
        lineage_id=LID, execution_id=XID, at=T0, children=-3, output_hash="h\x00"
    )
    cancelled = b.cancelled(
        lineage_id=other,
        execution_id=XID,
        at=MAX_MICROS + 10,
        children=MAX_INT4 + 1,
        reason=append_note("stop\x00", "reason: lone surrogates replaced by U+FFFD"),
    )
    p = plan([completed, cancelled])
    assert p.rejected == ()
    got = rows(p)
    done, stopped = got[LID], got[other]
    assert (done["status"], done["children_expected"], done["output_hash"]) == (
        "completed",
        0,
        f"h{U}",
    )
    assert done["error"] == {
        "repaired": "output_hash: NUL replaced by U+FFFD; children: -3 is not a count, "
        "recorded as 0"
    }
    assert (stopped["status"], stopped["children_expected"], stopped["completed_at"]) == (
        "cancelled",
        MAX_INT4,
        MAX_MICROS,
    )
    assert stopped["cancel_reason"] == f"stop{U}"
    assert stopped["error"]["repaired"].startswith(
        "reason: lone surrogates replaced by U+FFFD; occurred_at: "
    )


def test_execution_events_are_repaired_and_noted() -> None:
    b = _builder(12)
    started = b.execution_started(
        execution_id=XID,
        at=T0,
        pipeline="p\x00",
        metadata={"n": float("nan")},
        replay_from_stage="s\x00",
    )
    finished = b.execution_finished(execution_id=XID, at=T0 + 1, status="FAILED", error="e\x00")
    p = plan([started, finished])
    assert p.rejected == ()
    x = executions(p)[XID]
    assert (x["pipeline"], x["replay_from_stage"]) == (f"p{U}", f"s{U}")
    assert x["metadata"] == {
        "n": "NaN",
        NOTE_KEY: "pipeline: NUL replaced by U+FFFD; replay_from_stage: NUL replaced by U+FFFD; "
        "metadata['n']: NaN recorded as text",
    }
    assert x["error"] == f"e{U}\n[factflow.repaired: error: NUL replaced by U+FFFD]"
    assert x["status"] == "failed"


def test_the_note_comes_from_the_winning_event_alone() -> None:
    b = _builder(13)
    # The repaired start is earlier: it wins, and its note with it, in any order.
    hostile = b.started(lineage_id=LID, execution_id=XID, at=T0, route_id="\x00")
    clean = b.started(lineage_id=LID, execution_id=XID, at=T0 + 1, route_id="ok")
    for events in ([hostile, clean], [clean, hostile, clean, hostile]):
        row = rows(plan(events))[LID]
        assert (row["route_id"], row["start_event_id"]) == (U, hostile["event_id"])
        assert row["metadata"][NOTE_KEY] == "route_id: NUL replaced by U+FFFD"
    # The clamped time is what the start competes with: year 10000 comes last.
    late = b.started(lineage_id=LID, execution_id=XID, at=MAX_MICROS + 1, route_id="late")
    for events in ([late, clean], [clean, late]):
        assert rows(plan(events))[LID]["route_id"] == "ok"


def test_lone_surrogates_are_replaced_once_an_event_is_repaired() -> None:
    # Decoded events hold none (the codec decodes strict UTF-8), so the
    # planner's fast path does not look for them; a repair replaces them too.
    b = _builder(14)
    start = b.started(
        lineage_id=LID, execution_id=XID, at=T0, route_id="r\udc80\x00", metadata={"k": "\ud800x"}
    )
    row = rows(plan([start]))[LID]
    assert (row["route_id"], row["metadata"]["k"]) == (f"r{U}{U}", f"{U}x")
    assert row["metadata"][NOTE_KEY] == (
        "route_id: NUL and lone surrogates replaced by U+FFFD; "
        "metadata['k']: lone surrogates replaced by U+FFFD"
    )


def _start(**changes: Any) -> dict[str, Any]:
    ev = _builder(15).started(lineage_id=LID, execution_id=XID, at=T0)
    ev["payload"].update(changes)
    return ev


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (_start(parent_id=LID), "parent_id equals lineage_id"),
        (_start(lineage_id=b"short"), "not a 16-byte UUID"),
        (_start(adapter_name=None), "adapter_name is not a string"),
        (_start(metadata={"k": [1]}), "metadata['k'] is not a scalar"),
        ({**_start(), "occurred_at": "now"}, "is not a time"),
        ({**_start(), "event_type": "NEW_FANCY_TYPE"}, "unknown event type"),
    ],
)
def test_only_events_of_the_wrong_shape_are_rejected(event: dict[str, Any], reason: str) -> None:
    good = _builder(16).started(lineage_id=PARENT, execution_id=XID, at=T0)
    p = plan([event, good])
    assert [r.index for r in p.rejected] == [0]
    assert reason in p.rejected[0].reason
    assert list(rows(p)) == [PARENT]


def test_rejections_keep_the_order_of_the_batch() -> None:
    b = _builder(17)
    bad = b.started(lineage_id=LID, execution_id=XID, at=T0, adapter_name=None)  # type: ignore[arg-type]
    hostile = b.started(lineage_id=PARENT, execution_id=XID, at=T0, route_id="\x00")
    worse = b.execution_finished(execution_id=XID, at=T0, status="EXPLODED")
    p = plan([bad, hostile, worse])
    assert [r.index for r in p.rejected] == [0, 2]
    assert list(rows(p)) == [PARENT]


def test_started_at_is_staged_relative_to_the_postgresql_epoch() -> None:
    # (a guard for the helpers above: rows() adds the epoch back)
    b = _builder(18)
    start = b.started(lineage_id=LID, execution_id=XID, at=MIN_MICROS - 1)
    assert plan([start]).lineage[0][11] == MIN_MICROS - PG_EPOCH_MICROS


def test_the_card_shows_the_note_as_one_escaped_line() -> None:
    from factflow_lineage.query._format import lineage_card, untrusted
    from tests.unit.test_query_format import row as query_row

    note = "route_id: NUL replaced by U+FFFD; metadata['\x1b[2J']: NaN recorded as text\n"
    card = lineage_card(query_row(1, repaired=note))
    (line,) = [x for x in card.splitlines() if x.startswith("repaired")]
    assert "\x1b" not in card and "\\x1b[2J" in line and line.endswith("as text\\n")
    assert untrusted("plain é") == "plain é"
    assert "repaired" not in lineage_card(query_row(2))
