"""The fold (merge + pending-children propagation + count differences), with no database.

A dict stands in for the lineage table: it holds each row as ``_sql.LOOKUP``
returns it and takes the fold's inserts, rewrites and deletes. Folding any
batches of any arrangement of an event set must leave in it the state
columns and counts the reference model computes from the set alone. The real
table and SQL are checked the same way in tests/integration.
"""

from __future__ import annotations

import random
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factflow_lineage.consumer._fold import (
    STORED_COLUMNS,
    Fold,
    ParentCycleError,
    Row,
    Stored,
    fold,
)
from factflow_lineage.consumer._planner import plan
from tests.support import reference_model
from tests.support.events import T0, Event, EventBuilder, num_uid, scenarios

XID = num_uid(1, 0xE)
ROOT, CHILD_A, CHILD_B, OTHER = (num_uid(i, 0xA) for i in range(1, 5))

# The state columns the fold decides, as the reference model names them.
STATE = (
    "execution_id",
    "parent_id",
    "route_id",
    "adapter_name",
    "status",
    "children_expected",
    "children_registered",
    "children_settled",
    "descendants_failed",
    "start_event_id",
    "terminal_event_id",
    "contrib_parent",
    "contrib_settled",
    "contrib_failed",
)
_STORED_NAME = {"children_registered": "registered", "children_settled": "settled_children"}


class Table:
    """The lineage table and the counts, as far as the fold reads and writes them."""

    def __init__(self) -> None:
        self.rows: dict[bytes, Stored] = {}
        self.stats: dict[tuple[Any, ...], list[int]] = {}
        self.executions: dict[bytes, list[int]] = {}
        self.fetched: list[list[bytes]] = []
        # id -> the parent of a link broken to break a cycle (metadata's note)
        self.notes: dict[bytes, bytes] = {}

    def fetch(self, ids: list[bytes]) -> list[Stored]:
        self.fetched.append(ids)
        return [self.rows[i] for i in ids if i in self.rows]

    def links(self, ids: list[bytes]) -> list[tuple[Any, ...]]:
        """What _projection's links statement reads: id, parent, start, noted parent."""
        return [
            (i, r[5], r[3] if r[2] is not None else None, self.notes.get(i))
            for i in ids
            if (r := self.rows.get(i)) is not None
        ]

    def apply(self, events: list[Event], max_levels: int = 1_000) -> Fold:
        staged = plan(events).lineage
        stored = {s[0]: self.rows[s[0]] for s in staged if s[0] in self.rows}
        out = fold(staged, stored, self.fetch, max_levels=max_levels, links=self.links)
        for row in (*out.inserts, *out.updates):
            self.rows[row.id] = _stored(row)
            if row.start_won:  # a start brings its own metadata: no note
                self.notes.pop(row.id, None)
        for lid, parent in out.repairs.items():
            if parent is None:
                self.notes.pop(lid, None)
            else:
                self.notes[lid] = parent
        for row in out.deletes:
            del self.rows[row.id]
        for key, diff in out.stats.items():
            total = self.stats.setdefault(key, [0] * 5)
            total[:] = [a + b for a, b in zip(total, diff, strict=True)]
            if not total[0]:
                del self.stats[key]
        for xid, diff in out.executions.items():
            total = self.executions.setdefault(xid, [0] * 6)
            total[:] = [a + b for a, b in zip(total, diff, strict=True)]
        return out

    def state(self) -> list[tuple[Any, ...]]:
        """The state columns of every row, in the reference model's terms."""
        out = []
        for r in self.rows.values():
            stored = dict(zip(STORED_COLUMNS, r, strict=True))
            values = (stored[c] for c in STATE)
            out.append(
                (UUID(bytes=r[0]), *(UUID(bytes=v) if type(v) is bytes else v for v in values))
            )
        return sorted(out)


def _stored(row: Row) -> Stored:
    return (
        row.id,
        b"tid",
        *(getattr(row, _STORED_NAME.get(c, c)) for c in STORED_COLUMNS[2:]),
    )


def model_state(events: list[Event]) -> tuple[list[tuple[Any, ...]], dict[Any, list[int]]]:
    tables = reference_model.project(events)
    columns = reference_model.LINEAGE_COLUMNS
    rows = sorted((r[0], *(r[columns.index(c)] for c in STATE)) for r in tables["lineage"])
    stats = {(r[0], r[1], r[2]): list(r[3:]) for r in tables["lineage_stats"]}
    return rows, stats


def table_stats(t: Table) -> dict[Any, list[int]]:
    return {(UUID(bytes=k[0]), k[1], k[2]): v for k, v in t.stats.items()}


def start(b: EventBuilder, lid: bytes, parent: bytes | None, at: int) -> Event:
    return b.started(
        lineage_id=lid,
        execution_id=XID,
        parent_id=parent,
        root_id=parent or lid,
        route_id="r",
        adapter_name="a",
        at=at,
    )


@pytest.fixture
def b() -> EventBuilder:
    return EventBuilder(random.Random(3))


def test_a_start_and_its_completion_are_one_insert_counted_once(b: EventBuilder) -> None:
    t = Table()
    done = b.completed(lineage_id=ROOT, execution_id=XID, at=T0 + 1)
    out = t.apply([start(b, ROOT, None, T0), done])
    assert [r.id for r in out.inserts] == [ROOT] and not out.updates and out.levels == 0
    assert out.stats == {(XID, "r", "a"): [1, 1, 0, 0, 0]}
    assert out.executions == {XID: [1, 1, 0, 0, 0, 0]}  # settled: nothing unsettled
    assert t.fetched == []  # no parent to climb to


def test_a_duplicate_writes_nothing(b: EventBuilder) -> None:
    t = Table()
    events = [start(b, ROOT, None, T0), b.completed(lineage_id=ROOT, execution_id=XID, at=T0 + 1)]
    t.apply(events)
    out = t.apply(events)
    assert (out.inserts, out.updates, out.deletes, out.stats) == ([], [], [], {})


def test_a_late_child_unsettles_then_settles_its_stored_parent(b: EventBuilder) -> None:
    t = Table()
    t.apply(
        [
            start(b, ROOT, None, T0),
            b.completed(lineage_id=ROOT, execution_id=XID, children=1, at=T0 + 5),
        ]
    )
    assert t.executions[XID][5] == 1  # completed, but its announced child is pending
    out = t.apply([start(b, CHILD_A, ROOT, T0 + 1)])
    assert [r.id for r in out.updates] == [ROOT] and out.levels == 1
    assert t.executions[XID][5] == 2  # the child itself is pending too
    t.apply([b.completed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 6)])
    assert t.executions[XID] == [2, 2, 0, 0, 0, 0]


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_a_failed_row_waits_only_for_the_children_that_registered(
    b: EventBuilder, end: str
) -> None:
    t = Table()
    # ROOT announced one child (CHILD_A), which announced three outputs and
    # then failed or was cancelled: those children never ran.
    t.apply(
        [
            start(b, ROOT, None, T0),
            b.completed(lineage_id=ROOT, execution_id=XID, children=1, at=T0 + 5),
            start(b, CHILD_A, ROOT, T0 + 1),
            b.terminal(end, lineage_id=CHILD_A, execution_id=XID, children=3, at=T0 + 6),
        ]
    )
    assert t.executions[XID][5] == 0  # nothing unsettled: CHILD_A, then ROOT, settled
    assert t.rows[ROOT][13] == 1 and t.rows[CHILD_A][16] is True  # contrib_settled
    # One of the announced children registers late: CHILD_A waits for it again,
    # and so does ROOT, until it settles.
    t.apply([start(b, CHILD_B, CHILD_A, T0 + 2)])
    assert t.executions[XID][5] == 3
    assert t.rows[ROOT][13] == 0
    t.apply([b.completed(lineage_id=CHILD_B, execution_id=XID, at=T0 + 7)])
    assert t.executions[XID][5] == 0 and t.rows[ROOT][13] == 1


def test_an_unknown_parent_is_fetched_once_then_becomes_a_placeholder(b: EventBuilder) -> None:
    t = Table()
    out = t.apply([start(b, CHILD_A, ROOT, T0), start(b, CHILD_B, ROOT, T0)])
    assert t.fetched == [[ROOT]]
    placeholder = next(r for r in out.inserts if r.id == ROOT)
    assert (placeholder.start_event_id, placeholder.registered, placeholder.counted()) == (
        None,
        2,
        None,
    )


def test_a_placeholder_nobody_names_any_more_is_deleted(b: EventBuilder) -> None:
    t = Table()
    t.apply([start(b, CHILD_A, ROOT, T0 + 10)])
    assert ROOT in t.rows
    # An earlier start of the same row, naming another parent, wins.
    out = t.apply([start(b, CHILD_A, OTHER, T0)])
    assert [r.id for r in out.deletes] == [ROOT]
    assert ROOT not in t.rows and t.rows[OTHER][12] == 1  # OTHER: one child registered


def test_a_cycle_in_one_batch_loses_the_link_of_its_earliest_row(b: EventBuilder) -> None:
    t = Table()
    events = [
        start(b, CHILD_A, CHILD_B, T0 + 1),
        start(b, CHILD_B, CHILD_A, T0),
        b.failed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 2),
    ]
    out = t.apply(events)
    assert out.repairs == {CHILD_B: CHILD_A}
    assert t.rows[CHILD_B][5] is None and t.rows[CHILD_A][5] == CHILD_B
    assert t.state() == model_state(events)[0]


def test_a_cycle_across_batches_in_any_order_gives_the_models_state() -> None:
    """A -> B -> C -> A, then an earlier start of B naming ROOT: the cycle is gone."""
    b = EventBuilder(random.Random(9))
    events = [
        start(b, CHILD_A, CHILD_B, T0 + 3),
        start(b, CHILD_B, OTHER, T0 + 2),
        start(b, OTHER, CHILD_A, T0 + 1),
        b.failed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 9),
        b.completed(lineage_id=OTHER, execution_id=XID, at=T0 + 9, children=1),
    ]
    rng = random.Random(4)
    for n in (3, 5):
        want = model_state(events[:n])
        for _ in range(30):
            order = rng.sample(events[:n], n)
            t = Table()
            for event in order:
                t.apply([event])
            assert (t.state(), table_stats(t)) == want, order
    # OTHER started first: its link is the one dropped.
    assert next(r for r in model_state(events)[0] if r[0] == UUID(bytes=OTHER))[2] is None
    breaker = start(b, CHILD_B, ROOT, T0)
    rows, _ = model_state([*events, breaker])
    assert all(r[2] is not None for r in rows if r[0] != UUID(bytes=ROOT))  # every link kept
    t = Table()
    t.apply(events)
    assert t.notes == {OTHER: CHILD_A}
    t.apply([breaker])
    assert t.state() == rows and t.notes == {}


def test_a_cycle_stored_by_an_older_release_raises_after_max_levels(b: EventBuilder) -> None:
    t = Table()
    t.apply([start(b, CHILD_A, CHILD_B, T0), start(b, CHILD_B, None, T0)])
    # Planted as an older release could have left it: B names A, no note.
    stored = list(t.rows[CHILD_B])
    stored[5] = stored[15] = CHILD_A
    stored[16] = False
    t.rows[CHILD_B] = tuple(stored)
    t.rows[CHILD_A] = (*t.rows[CHILD_A][:12], 1, *t.rows[CHILD_A][13:])
    with pytest.raises(ParentCycleError, match="after 30 levels"):
        t.apply([b.failed(lineage_id=CHILD_A, execution_id=XID, at=T0 + 1)], max_levels=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=scenarios(max_rows=30), data=st.data())
def test_any_batches_of_any_order_fold_to_the_models_state(
    events: list[Event], data: st.DataObject
) -> None:
    rng = data.draw(st.randoms(use_true_random=False))
    stream = [e for e in events for _ in range(rng.choice((1, 1, 2, 3)))]
    rng.shuffle(stream)
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 8))))
    t = Table()
    for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        t.apply(stream[i:j])
    rows, stats = model_state(events)
    assert t.state() == rows
    assert table_stats(t) == stats
