"""The batch planner: coalescing a batch per row, with no database."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factflow_lineage.consumer._planner import (
    EXECUTION_STAGE,
    LINEAGE_STAGE,
    PG_EPOCH_MICROS,
    Plan,
    invalid_reason,
    plan,
)
from tests.support.events import T0, EventBuilder, num_uid, scenarios

LID = num_uid(1, 0xA)
PARENT = num_uid(2, 0xA)
XID = num_uid(1, 0xE)


def _decoded(stage: tuple[tuple[str, str], ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """A staged row as column -> value, times back in Unix micros, jsonb parsed."""
    out = {}
    for (name, kind), value in zip(stage, row, strict=True):
        if value is not None and kind == "timestamptz":
            value += PG_EPOCH_MICROS
        elif value is not None and kind == "jsonb":
            assert value[0] == "\x01"  # jsonb's binary format, version 1
            value = json.loads(value[1:])
        out[name] = value
    return out


def rows(p: Plan) -> dict[bytes, dict[str, Any]]:
    """Staged lineage rows by id."""
    return {r[0]: _decoded(LINEAGE_STAGE, r) for r in p.lineage}


def executions(p: Plan) -> dict[bytes, dict[str, Any]]:
    return {r[0]: _decoded(EXECUTION_STAGE, r) for r in p.executions}


def test_a_start_and_its_completion_become_one_row() -> None:
    b = EventBuilder(random.Random(1))
    start = b.started(
        lineage_id=LID,
        execution_id=XID,
        parent_id=PARENT,
        root_id=PARENT,
        route_id="fetch",
        adapter_name="web_scraper",
        at=T0,
        input_hash="h-in",
        input_key="s3://in/1",
        metadata={"attempt": 2, "ratio": 0.5, "ok": True, "none": None},
    )
    done = b.completed(lineage_id=LID, execution_id=XID, at=T0 + 5, children=3, output_hash="h")
    p = plan([done, start])
    assert len(p.lineage) == 1
    row = rows(p)[LID]
    assert row["start_event_id"] == start["event_id"]
    assert row["terminal_event_id"] == done["event_id"]
    assert (row["parent_id"], row["root_id"], row["execution_id"]) == (PARENT, PARENT, XID)
    assert (row["route_id"], row["adapter_name"]) == ("fetch", "web_scraper")
    assert (row["started_at"], row["completed_at"]) == (T0, T0 + 5)
    assert (row["status"], row["status_rank"], row["children_expected"]) == ("completed", 1, 3)
    assert (row["input_hash"], row["output_hash"], row["error"]) == ("h-in", "h", None)
    assert row["input_key"] == "s3://in/1"
    assert row["metadata"] == {
        "attempt": 2,
        "ratio": 0.5,
        "ok": True,
        "none": None,
        "input_key": "s3://in/1",
    }


def test_duplicates_and_order_do_not_change_the_plan() -> None:
    b = EventBuilder(random.Random(2))
    events = [
        b.started(lineage_id=LID, execution_id=XID, at=T0),
        b.failed(lineage_id=LID, execution_id=XID, at=T0 + 9, children=1),
        b.started(lineage_id=PARENT, execution_id=XID, at=T0 - 5),
        b.execution_started(execution_id=XID, at=T0 - 10),
    ]
    once = plan(events)
    rng = random.Random(3)
    many = events * 5
    rng.shuffle(many)
    again = plan(many)
    assert sorted(once.lineage) == sorted(again.lineage)
    assert once.executions == again.executions
    assert again.events == 20 and again.rejected == () and again.ignored == 0


@pytest.mark.parametrize("first", ["completed", "cancelled", "failed"])
def test_terminal_precedence_failed_then_cancelled_then_completed(first: str) -> None:
    b = EventBuilder(random.Random(4))
    ends = {
        s: b.terminal(s, lineage_id=LID, execution_id=XID, at=T0 + i, children=i)
        for i, s in enumerate(["failed", "cancelled", "completed"])
    }
    # Whatever arrives first, and although failed is the earliest event.
    ordered = [ends[first], *(e for s, e in ends.items() if s != first)]
    row = rows(plan(ordered))[LID]
    assert (row["status"], row["children_expected"]) == ("failed", 0)
    assert row["error"]["class"] == "builtins.ValueError"
    row = rows(plan([ends["completed"], ends["cancelled"]]))[LID]
    assert (row["status"], row["cancel_reason"], row["output_hash"]) == (
        "cancelled",
        "shutdown",
        None,
    )


def test_ties_are_broken_by_time_then_event_id() -> None:
    b = EventBuilder(random.Random(5))
    late = b.completed(lineage_id=LID, execution_id=XID, at=T0 + 2, children=2)
    early = b.completed(lineage_id=LID, execution_id=XID, at=T0 + 1, children=1)
    assert rows(plan([late, early]))[LID]["children_expected"] == 2
    low = b.completed(lineage_id=LID, execution_id=XID, at=T0, children=7, event_id=num_uid(1))
    high = b.completed(lineage_id=LID, execution_id=XID, at=T0, children=8, event_id=num_uid(2))
    assert rows(plan([high, low]))[LID]["children_expected"] == 8
    # Starts: the earliest wins, then the smallest event id.
    s1 = b.started(lineage_id=LID, execution_id=XID, at=T0, route_id="a", event_id=num_uid(9))
    s2 = b.started(lineage_id=LID, execution_id=XID, at=T0, route_id="b", event_id=num_uid(3))
    s3 = b.started(lineage_id=LID, execution_id=XID, at=T0 + 1, route_id="c", event_id=num_uid(1))
    assert rows(plan([s3, s1, s2]))[LID]["route_id"] == "b"


def test_a_terminal_event_alone_stages_a_placeholder() -> None:
    b = EventBuilder(random.Random(6))
    row = rows(plan([b.cancelled(lineage_id=LID, execution_id=XID, at=T0, reason=None)]))[LID]
    assert row["start_event_id"] is None and row["route_id"] is None
    assert (row["status"], row["term_execution_id"], row["completed_at"]) == ("cancelled", XID, T0)


def test_execution_events_are_coalesced_per_execution() -> None:
    b = EventBuilder(random.Random(7))
    p = plan(
        [
            b.execution_finished(execution_id=XID, at=T0 + 9, status="COMPLETED"),
            b.execution_started(execution_id=XID, at=T0 + 1, pipeline="late"),
            b.execution_started(execution_id=XID, at=T0, pipeline="ingest", replay_of=LID),
            b.execution_finished(execution_id=XID, at=T0 + 5, status="FAILED", error="x"),
        ]
    )
    x = executions(p)[XID]
    assert (x["pipeline"], x["replay_of"], x["started_at"]) == ("ingest", LID, T0)
    assert (x["status"], x["error"], x["finished_at"]) == ("failed", "x", T0 + 5)
    assert p.lineage == []


def test_v1_execution_start_without_replay_fields() -> None:
    b = EventBuilder(random.Random(8))
    ev = b.execution_started(execution_id=XID, at=T0)
    del ev["payload"]["replay_of"], ev["payload"]["replay_from_stage"]
    x = executions(plan([ev]))[XID]
    assert (x["replay_of"], x["replay_from_stage"]) == (None, None)


def test_non_finite_floats_become_strings() -> None:
    b = EventBuilder(random.Random(9))
    ev = b.started(
        lineage_id=LID,
        execution_id=XID,
        at=T0,
        metadata={"a": float("nan"), "b": float("inf"), "c": float("-inf"), "d": 1.5},
    )
    meta = rows(plan([ev]))[LID]["metadata"]
    assert meta.pop("factflow.repaired").startswith("metadata['a']: NaN recorded as text")
    assert meta == {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1.5}


def _bad(mutate: Any) -> dict[str, Any]:
    b = EventBuilder(random.Random(10))
    ev = b.started(lineage_id=LID, execution_id=XID, at=T0, parent_id=PARENT)
    mutate(ev)
    return ev


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        # (NUL, times out of range and the like are repaired: test_planner_repair.py)
        (lambda e: e["payload"]["metadata"].update(k=[1]), "metadata['k'] is not a scalar"),
        (lambda e: e.update(occurred_at="now"), "is not a time"),
        (lambda e: e["payload"].update(parent_id=LID), "parent_id equals lineage_id"),
        (lambda e: e["payload"].update(lineage_id=b"short"), "not a 16-byte UUID"),
        (lambda e: e["payload"].update(adapter_name=None), "adapter_name is not a string"),
        (lambda e: e["payload"].pop("route_id"), "field 'route_id' missing"),
        (lambda e: e.update(event_type="NEW_FANCY_TYPE"), "unknown event type"),
    ],
)
def test_unstorable_events_are_rejected_with_a_reason(mutate: Any, reason: str) -> None:
    good = EventBuilder(random.Random(11)).started(lineage_id=PARENT, execution_id=XID, at=T0)
    bad = _bad(mutate)
    p = plan([good, bad])
    assert [r.index for r in p.rejected] == [1]
    assert reason in p.rejected[0].reason
    assert reason in (invalid_reason(bad) or "")
    assert list(rows(p)) == [PARENT]


def test_terminal_events_are_checked_too() -> None:
    b = EventBuilder(random.Random(12))
    wrong_shape = b.completed(lineage_id=LID, execution_id=XID, at=T0)
    del wrong_shape["payload"]["output_hash"]
    status = b.execution_finished(execution_id=XID, at=T0, status="EXPLODED")
    no_text = b.failed(lineage_id=LID, execution_id=XID, at=T0)
    no_text["payload"]["error_message"] = None
    p = plan([wrong_shape, status, no_text])
    assert [r.index for r in p.rejected] == [0, 1, 2]
    assert "output_hash" in p.rejected[0].reason
    assert "EXPLODED" in p.rejected[1].reason
    assert "error_message is not a string" in p.rejected[2].reason
    assert p.lineage == [] and p.executions == []


def test_an_invalid_start_does_not_shadow_a_valid_one() -> None:
    b = EventBuilder(random.Random(13))
    bad = b.started(lineage_id=LID, execution_id=XID, at=T0, route_id="ok")
    bad["payload"]["route_id"] = None
    good = b.started(lineage_id=LID, execution_id=XID, at=T0 + 1, route_id="ok")
    assert rows(plan([bad, good]))[LID]["route_id"] == "ok"


def test_unknown_types_are_ignored_not_rejected() -> None:
    b = EventBuilder(random.Random(14))
    p = plan([b.event("UNKNOWN", T0, {})])
    assert (p.ignored, p.rejected, p.lineage) == (1, (), [])
    assert invalid_reason(b.event("UNKNOWN", T0, {})) is None


def test_valid_events_have_no_reason() -> None:
    b = EventBuilder(random.Random(15))
    for ev in (
        b.started(lineage_id=LID, execution_id=XID, at=T0, batch_id=PARENT, input_key="k"),
        b.completed(lineage_id=LID, execution_id=XID, at=T0),
        b.failed(lineage_id=LID, execution_id=XID, at=T0, traceback=None),
        b.cancelled(lineage_id=LID, execution_id=XID, at=T0, reason=None),
        b.execution_started(execution_id=XID, at=T0),
        b.execution_finished(execution_id=XID, at=T0, status="CANCELLED"),
    ):
        assert invalid_reason(ev) is None


@settings(max_examples=60, deadline=None)
@given(events=scenarios(), data=st.data())
def test_any_order_and_duplication_plan_the_same_rows(
    events: list[Any], data: st.DataObject
) -> None:
    rng = data.draw(st.randoms(use_true_random=False))
    shuffled = [e for e in events for _ in range(rng.randint(1, 3))]
    rng.shuffle(shuffled)
    a, b = plan(events), plan(shuffled)
    assert sorted(a.lineage, key=repr) == sorted(b.lineage, key=repr)
    assert a.executions == b.executions
    ids = {e["payload"].get("lineage_id") for e in events} - {None}
    assert {r[0] for r in a.lineage} == ids
