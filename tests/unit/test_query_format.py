"""The CLI's rendering: tables, cards, the chain tree, JSON (no database needed)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from factflow_lineage.query import _format as fmt
from factflow_lineage.query._models import (
    BatchResult,
    ChainResult,
    ErrorInfo,
    ExecutionRow,
    LineageRow,
    Page,
    StatsRow,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def row(n: int, parent: LineageRow | None = None, **changes: Any) -> LineageRow:
    ident = uuid.UUID(int=n)
    base = LineageRow(
        id=ident,
        execution_id=uuid.UUID(int=1000),
        root_id=parent.root_id if parent else ident,
        parent_id=parent.id if parent else None,
        route_id="sitemap_scraper",
        adapter_name=f"stage_{n}",
        status="completed",
        input_hash="sha256:in",
        output_hash="sha256:out",
        error=None,
        cancel_reason=None,
        started_at=T0 + timedelta(seconds=n),
        completed_at=T0 + timedelta(seconds=n, milliseconds=5),
        batch_id=None,
        input_key=f"executions/x/{n}",
        metadata={"input_key": f"executions/x/{n}"},
        children_expected=0,
        children_registered=0,
        children_settled=0,
        children_pending=0,
        descendants_failed=0,
        settled=True,
        known=True,
    )
    return replace(base, **changes)


BOOM = ErrorInfo(error_class="HTTPError", message="503", traceback="Traceback:\n  x\nHTTPError")


def test_timestamps_are_utc_to_the_millisecond() -> None:
    local = T0.astimezone(timezone(timedelta(hours=2)))
    assert fmt.timestamp(local) == "2024-05-01 12:00:00.250Z"
    assert fmt.timestamp(None) == "-"


def test_table_columns_line_up_and_numbers_align_right() -> None:
    rows = [
        StatsRow(route_id="r", adapter_name="web_scraper", count=42, completed=40, failed=2,
                 cancelled=0, pending=0),
        StatsRow(route_id="r", adapter_name="a", count=1, completed=1, failed=0, cancelled=0,
                 pending=0),
    ]  # fmt: skip
    lines = fmt.stats_table(rows).splitlines()
    assert lines[0].split() == ["ROUTE", "ADAPTER", "COUNT", "COMPLETED", "FAILED", "PENDING"]
    assert lines[1].split() == ["r", "web_scraper", "42", "40", "2", "0"]
    # Right-aligned: every row's COUNT ends where the header's does.
    end = lines[0].index("COUNT") + len("COUNT")
    assert all(line[end - 1].isdigit() and line[end] == " " for line in lines[1:])
    assert "CANCELLED" not in lines[0]


def test_stats_table_shows_cancelled_only_when_something_was() -> None:
    rows = [StatsRow(route_id="r", adapter_name="a", count=3, completed=1, failed=0,
                     cancelled=2, pending=0)]  # fmt: skip
    header, line = fmt.stats_table(rows).splitlines()
    assert header.split()[-1] == "CANCELLED" and line.split()[-1] == "2"


def test_failure_table_has_the_guides_columns() -> None:
    failed = row(7, status="failed", error=BOOM)
    header, line = fmt.table(fmt.FAILURE_COLUMNS, [failed]).splitlines()
    assert header.split() == ["LINEAGE", "ID", "EXECUTION", "ROUTE", "ADAPTER", "FAILED", "AT",
                              "ERROR"]  # fmt: skip
    assert line.split() == [
        str(failed.id), str(failed.execution_id), "sitemap_scraper", "stage_7",
        "2024-05-01", "12:00:07.255Z", "HTTPError",
    ]  # fmt: skip


def test_colour_only_when_asked_and_alignment_survives_it() -> None:
    rows = [row(1, status="failed", error=BOOM), row(2)]
    plain = fmt.table(fmt.LINEAGE_COLUMNS, rows)
    coloured = fmt.table(fmt.LINEAGE_COLUMNS, rows, fmt.Style(colour=True))
    assert not ANSI.search(plain)
    assert ANSI.search(coloured)
    assert ANSI.sub("", coloured) == plain


def test_lineage_card_has_every_field_and_the_traceback() -> None:
    failed = row(3, status="failed", error=BOOM, batch_id=uuid.UUID(int=77))
    card = fmt.lineage_card(failed)
    for text in (str(failed.id), "failed", str(uuid.UUID(int=77)), "sha256:in", "HTTPError",
                 "  x", "executions/x/3", '"input_key"'):  # fmt: skip
        assert text in card
    # The traceback's lines are indented under their label, not glued to the left edge.
    assert not any(line.startswith("  x") for line in card.splitlines())


def test_execution_card_shows_the_replay_only_for_a_replay() -> None:
    execution = ExecutionRow(
        id=uuid.UUID(int=5), pipeline="p", status="failed", started_at=T0,
        finished_at=T0 + timedelta(seconds=90), replay_of=None, replay_from_stage=None,
        error="2 failed", total=84, completed=82, failed=2, cancelled=0, pending=0,
        unsettled=0, settled=True, known=True,
    )  # fmt: skip
    card = fmt.execution_card(execution)
    assert (
        "replay" not in card and "90.000 s" in card and "84 total: 82 completed, 2 failed" in card
    )
    replay = fmt.execution_card(
        replace(execution, replay_of=uuid.UUID(int=4), replay_from_stage="web_scraper")
    )
    assert f"replay_of          {uuid.UUID(int=4)}" in replay
    assert "replay_from_stage  web_scraper" in replay


def test_batch_summary_counts_outcomes() -> None:
    rows = (row(1), row(2), row(3, status="failed", error=BOOM))
    result = BatchResult(batch_id=uuid.UUID(int=9), rows=rows, completed=2, failed=1,
                         cancelled=0, pending=0)  # fmt: skip
    assert fmt.batch_summary(result) == f"batch {uuid.UUID(int=9)}: 3 rows, 2 completed, 1 failed"


def _chain() -> ChainResult:
    root = row(1, children_registered=1)
    middle = row(2, root, children_registered=2, children_pending=1)
    failed = row(3, middle, status="failed", error=BOOM)
    pending = row(4, middle, status="pending", completed_at=None)
    below = row(5, pending)
    return ChainResult(
        target=middle.id, nodes=(root, middle, failed, pending, below), truncated=False,
        max_nodes=1000,
    )  # fmt: skip


def test_chain_tree_nests_descendants_and_marks_the_row_and_failures() -> None:
    lines = fmt.chain_tree(_chain()).splitlines()
    ids = [str(uuid.UUID(int=n)) for n in range(1, 6)]
    assert lines[0].startswith(f"o {ids[0]}")
    assert lines[1].startswith(f"└─ o {ids[1]}") and lines[1].endswith("<== this row")
    assert "pending children: 1" in lines[1]
    assert lines[2].startswith(f"   ├─ x {ids[2]}  FAILED") and "HTTPError" in lines[2]
    assert lines[3].startswith(f"   └─ o {ids[3]}  pending")
    assert lines[4].startswith(f"      └─ o {ids[4]}")
    assert lines[5] == "5 rows in the chain, 1 failed"
    assert "cut at --max-nodes" not in "\n".join(lines)


def test_chain_tree_says_when_it_was_cut() -> None:
    chain = replace(_chain(), truncated=True, max_nodes=5)
    assert "cut at --max-nodes 5" in fmt.chain_tree(chain).splitlines()[-1]


def test_chain_cut_above_the_top_ancestor_does_not_claim_a_missing_parent() -> None:
    chain = replace(_chain(), truncated=True)
    chain = replace(chain, nodes=chain.nodes[1:])
    first = fmt.chain_tree(chain).splitlines()[0]
    assert first == f"(parent {uuid.UUID(int=1)} and above: cut at --max-nodes 1000)"


def test_chain_tree_names_a_parent_the_projection_lacks() -> None:
    orphan = row(2, parent_id=uuid.UUID(int=99))
    chain = ChainResult(target=orphan.id, nodes=(orphan,), truncated=False, max_nodes=10)
    assert fmt.chain_tree(chain).splitlines()[0] == f"(parent {uuid.UUID(int=99)} is not recorded)"


def test_chain_tree_of_a_cycle_draws_each_row_once_without_recursion() -> None:
    # Parent links 1 -> 2 -> 3 -> 1 (data of an older release), 4 below 3.
    a, b, c = (uuid.UUID(int=n) for n in (1, 2, 3))
    nodes = (
        row(2, parent_id=a),
        row(3, parent_id=b),
        row(1, parent_id=c),
        row(4, parent_id=c, status="failed", error=BOOM),
    )
    chain = ChainResult(target=a, nodes=nodes, truncated=False, max_nodes=1000)
    lines = fmt.chain_tree(chain).splitlines()
    assert lines[0] == f"(parent {a} is below: the parent links form a cycle)"
    assert lines[1].startswith(f"o {b}")
    assert lines[2].startswith(f"└─ o {c}")
    assert lines[3].startswith(f"   ├─ o {a}") and lines[3].endswith("<== this row")
    assert lines[4] == f"   │  └─ {b} (drawn above: a cycle)"
    assert lines[5].startswith(f"   └─ x {uuid.UUID(int=4)}")
    assert lines[6] == "4 rows in the chain, 1 failed"


def test_chain_tree_of_a_self_parent_and_of_a_deep_chain() -> None:
    me = row(1, parent_id=uuid.UUID(int=1))
    lines = fmt.chain_tree(ChainResult(target=me.id, nodes=(me,), truncated=False, max_nodes=1))
    assert lines.splitlines()[0] == f"(parent {me.id} is below: the parent links form a cycle)"
    assert lines.splitlines()[2] == f"└─ {me.id} (drawn above: a cycle)"
    # Far deeper than Python's recursion limit: drawn by iteration.
    deep = [row(1)]
    for n in range(2, 1502):
        deep.append(row(n, deep[-1]))
    tree = fmt.chain_tree(
        ChainResult(target=deep[0].id, nodes=tuple(deep), truncated=False, max_nodes=1501)
    )
    assert tree.splitlines()[-1] == "1501 rows in the chain, 0 failed"


def test_chain_tree_names_a_parent_link_the_projector_dropped() -> None:
    note = {"parent_id": str(uuid.UUID(int=7)), "reason": "closes a cycle"}
    broken = row(1, metadata={"factflow.parent_cycle": note})
    chain = ChainResult(target=broken.id, nodes=(broken,), truncated=False, max_nodes=10)
    first = fmt.chain_tree(chain).splitlines()[0]
    assert first.startswith(f"o {broken.id}")
    assert f"(parent {uuid.UUID(int=7)} dropped: a parent cycle)" in first


def test_json_is_one_document_with_strings_for_ids_and_iso_times() -> None:
    failed = row(3, status="failed", error=BOOM, metadata={"input_key": "k", "n": 1})
    page = Page(rows=(failed,), next_cursor="abc")
    doc = json.loads(fmt.dumps(page))
    assert doc["next_cursor"] == "abc"
    got = doc["rows"][0]
    assert got["id"] == str(failed.id) and got["parent_id"] is None
    assert got["started_at"] == "2024-05-01T12:00:03.250000+00:00"
    assert datetime.fromisoformat(got["completed_at"]) == failed.completed_at
    assert got["error"] == {"class": "HTTPError", "message": "503", "traceback": BOOM.traceback}
    assert got["metadata"] == {"input_key": "k", "n": 1}
    assert list(got) == [f for f in LineageRow.__dataclass_fields__]
