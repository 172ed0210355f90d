"""The operator CLI against the real PostgreSQL: every command of the guide.

Commands run through the real root app (Typer's runner on
``factflow_lineage.cli.mounted_app()``, what ``main()`` runs) and, for the
entry point itself, as ``python -m factflow_lineage``.
The projection is the known dataset of ``support.query_dataset``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from factflow_lineage import cli
from support.query_dataset import BATCHES, E1, E2, FAILED, Dataset, load

Run = Callable[..., Result]


@pytest.fixture
def projection(pg_dsn: str, pg_schema: str) -> Dataset:
    """The known dataset (see support.query_dataset), in this test's own schema."""
    return load(pg_dsn, pg_schema)


@pytest.fixture
def factflow(projection: Dataset, pg_read_dsn: str) -> Run:
    """Run ``factflow ARGS...`` against the dataset's schema; returns the runner's result."""
    app = cli.mounted_app()
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        environment = {
            "FACTFLOW_PG_SCHEMA": projection.schema,
            "FACTFLOW_PG_READ_DSN": pg_read_dsn,
            **(env or {}),
        }
        result = runner.invoke(app, list(args), env=environment)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(
            result.exception
        )
        return result

    return run


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_error_line(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("factflow: error: ")
    return lines[0]


# --- failures ---------------------------------------------------------------------


def test_failures_most_recent_first_with_the_guides_columns(factflow: Run) -> None:
    result = factflow("lineage", "failures")
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split() == [
        "LINEAGE", "ID", "EXECUTION", "ROUTE", "ADAPTER", "FAILED", "AT", "ERROR",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines] == [str(FAILED[1]), str(FAILED[0])]
    assert lines[0].split()[1:4] == [str(E1), "sitemap_scraper", "web_scraper"]
    assert lines[0].split()[-1] == "ParseError" and lines[1].split()[-1] == "HTTPError"


def test_failures_scoped_to_an_execution_by_prefix(factflow: Run, projection: Dataset) -> None:
    mine = ok_json(factflow("lineage", "failures", "--execution", str(E1)[:8], "-o", "json"))
    assert [r["id"] for r in mine["rows"]] == [str(FAILED[1]), str(FAILED[0])]
    for got in mine["rows"]:
        want = projection.rows[uuid.UUID(got["id"])]
        assert got["error"] == want["error"]
        assert datetime.fromisoformat(got["completed_at"]) == want["completed_at"]
    none = factflow("lineage", "failures", "--execution", str(E2))
    assert none.exit_code == 0 and none.stdout.strip() == "(no rows)"


def test_failures_since_and_limit(factflow: Run, projection: Dataset) -> None:
    later = projection.rows[FAILED[1]]["completed_at"]
    since = ok_json(factflow("lineage", "failures", "--since", later.isoformat(), "-o", "json"))
    assert [r["id"] for r in since["rows"]] == [str(FAILED[1])]
    ages = ok_json(factflow("lineage", "failures", "--since", "1h", "-o", "json"))
    assert ages["rows"] == []  # the dataset is from 2024
    first = factflow("lineage", "failures", "--limit", "1")
    assert first.exit_code == 0 and str(FAILED[1]) in first.stdout
    assert str(FAILED[0]) not in first.stdout
    assert "more rows: add --cursor " in first.stderr
    cursor = first.stderr.split("--cursor ")[1].strip()
    rest = ok_json(
        factflow("lineage", "failures", "--limit", "1", "--cursor", cursor, "-o", "json")
    )
    assert [r["id"] for r in rest["rows"]] == [str(FAILED[0])] and rest["next_cursor"] is None


def test_failures_with_a_bad_since_is_a_usage_error(factflow: Run) -> None:
    line = one_error_line(factflow("lineage", "failures", "--since", "last tuesday"), 2)
    assert "invalid since 'last tuesday'" in line


# --- chain ------------------------------------------------------------------------


def test_chain_of_a_failure_reaches_the_root(factflow: Run, projection: Dataset) -> None:
    result = factflow("lineage", "chain", str(FAILED[0]))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"o {projection.root}  completed  sitemap_scraper/sitemap_parser")
    assert lines[1].startswith(f"└─ o {projection.expander}  completed")
    assert lines[2].startswith(f"   └─ x {FAILED[0]}  FAILED  sitemap_scraper/web_scraper")
    assert lines[2].endswith("<== this row") and "HTTPError" in lines[2]
    assert lines[3] == "3 rows in the chain, 1 failed"
    doc = ok_json(factflow("lineage", "chain", str(FAILED[0]), "--output", "json"))
    assert [n["id"] for n in doc["nodes"]] == [str(projection.root), str(projection.expander),
                                               str(FAILED[0])]  # fmt: skip
    assert doc["target"] == str(FAILED[0]) and doc["truncated"] is False


def test_chain_of_the_root_is_the_whole_tree(factflow: Run, projection: Dataset) -> None:
    doc = ok_json(factflow("lineage", "chain", str(projection.root), "-o", "json"))
    assert {n["id"] for n in doc["nodes"]} == {str(r["id"]) for r in projection.of(E1)}
    assert doc["nodes"][0]["id"] == str(projection.root)
    text = factflow("lineage", "chain", str(projection.root)).stdout
    assert text.count("\n├─ ") + text.count("\n└─ ") == 1  # one child of the root
    assert text.count(" x ") == 2 and "84 rows in the chain, 2 failed" in text


def test_chain_shows_pending_children(factflow: Run, projection: Dataset) -> None:
    text = factflow("lineage", "chain", str(projection.replay_pending)).stdout
    first, second = text.splitlines()[:2]
    assert first.startswith(f"o {projection.replay_pending}  pending")
    assert "pending children: 1" in first and first.endswith("<== this row")
    assert second.startswith(f"└─ o {projection.replay_child}  pending")


def test_chain_cut_by_max_nodes_says_so(factflow: Run, projection: Dataset) -> None:
    result = factflow("lineage", "chain", str(projection.root), "--max-nodes", "10")
    assert result.exit_code == 0
    assert "10 rows in the chain" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("... cut at --max-nodes 10")
    doc = ok_json(factflow("lineage", "chain", str(projection.root), "--max-nodes", "10",
                           "-o", "json"))  # fmt: skip
    assert doc["truncated"] is True and len(doc["nodes"]) == 10
    # Breadth first: the root, the expander, then eight of the 42 scrapers.
    assert [n["adapter_name"] for n in doc["nodes"][:3]] == [
        "sitemap_parser", "url_expander", "web_scraper",
    ]  # fmt: skip


# --- children, get ----------------------------------------------------------------


def test_children_paginate_without_gaps_or_duplicates(factflow: Run, projection: Dataset) -> None:
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        args = ["lineage", "children", str(projection.expander)[:8], "-n", "10", "-o", "json"]
        doc = ok_json(factflow(*args, *(["--cursor", cursor] if cursor else [])))
        seen += doc["rows"]
        pages += 1
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert [r["id"] for r in seen] == [
        str(r["id"]) for r in sorted(projection.rows.values(), key=_started_key)
        if r["parent_id"] == projection.expander
    ]  # fmt: skip
    assert len({r["id"] for r in seen}) == 42


def _started_key(row: dict[str, Any]) -> tuple[bool, datetime, str]:
    at = row["started_at"]
    return (at is None, at or datetime.max.replace(tzinfo=None), str(row["id"]))


def test_children_table_and_leaf(factflow: Run, projection: Dataset) -> None:
    result = factflow("lineage", "children", str(projection.root))
    assert result.exit_code == 0
    header, line = result.stdout.splitlines()
    assert header.split()[:4] == ["LINEAGE", "ID", "STATUS", "ROUTE"]
    assert line.split()[:4] == [str(projection.expander), "completed", "sitemap_scraper",
                                "url_expander"]  # fmt: skip
    leaf = factflow("lineage", "children", str(FAILED[0]))
    assert leaf.exit_code == 0 and leaf.stdout.strip() == "(no rows)"


def test_get_prints_every_field_of_the_row(factflow: Run, projection: Dataset) -> None:
    want = projection.rows[FAILED[0]]
    got = ok_json(factflow("lineage", "get", str(FAILED[0]), "--output", "json"))
    for name in ("id", "execution_id", "root_id", "parent_id", "batch_id"):
        assert got[name] == str(want[name])
    for name in ("route_id", "adapter_name", "status", "input_hash", "output_hash", "input_key",
                 "children_expected", "children_registered", "children_settled",
                 "descendants_failed", "error"):  # fmt: skip
        assert got[name] == want[name], name
    assert got["metadata"] == want["metadata"] and got["metadata"]["input_key"] == want["input_key"]
    assert datetime.fromisoformat(got["started_at"]) == want["started_at"]
    assert got["known"] is True and got["settled"] is True and got["children_pending"] == 0
    card = factflow("lineage", "get", str(FAILED[0])).stdout
    assert "HTTPError" in card and 'File "scrape.py"' in card and want["input_key"] in card


def test_get_of_a_placeholder_and_of_a_pending_row(factflow: Run, projection: Dataset) -> None:
    ghost = ok_json(factflow("lineage", "get", str(projection.placeholder), "-o", "json"))
    assert ghost["known"] is False and ghost["started_at"] is None and ghost["route_id"] is None
    pending = ok_json(factflow("lineage", "get", str(projection.replay_pending), "-o", "json"))
    assert pending["status"] == "pending" and pending["children_pending"] == 1
    assert pending["settled"] is False and pending["children_expected"] is None


def test_ids_by_unique_prefix_in_any_case(factflow: Run, projection: Dataset) -> None:
    prefix = str(projection.root)[:8].upper()
    assert ok_json(factflow("lineage", "get", prefix, "-o", "json"))["id"] == str(projection.root)
    target = projection.storage[0]
    longer = str(target)[:23]  # with dashes, cut mid-group
    assert ok_json(factflow("lineage", "get", longer, "-o", "json"))["id"] == str(target)
    assert ok_json(factflow("lineage", "get", target.hex[:12], "-o", "json"))["id"] == str(target)


def test_an_ambiguous_prefix_lists_the_candidates(factflow: Run) -> None:
    line = one_error_line(factflow("lineage", "get", "deadbeef"), 2)
    assert "ambiguous" in line and str(FAILED[0]) in line and str(FAILED[1]) in line


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("deadbee", "too short: give at least 8 hex characters"),
        ("not-an-id", "malformed lineage id 'not-an-id'"),
        ("deadbeef-0000-4000-8000-0000000000012", "malformed lineage id"),
    ],
)
def test_malformed_ids_are_usage_errors(factflow: Run, typed: str, message: str) -> None:
    assert message in one_error_line(factflow("lineage", "get", typed), 2)


@pytest.mark.parametrize(
    "args",
    [
        ("lineage", "get", "12345678-1234-4234-8234-123456789abc"),
        ("lineage", "get", "12345678"),
        ("lineage", "chain", "12345678-1234-4234-8234-123456789abc"),
        ("lineage", "children", "12345678-1234-4234-8234-123456789abc"),
        ("lineage", "batch", "12345678-1234-4234-8234-123456789abc"),
        ("lineage", "stats", "--execution", "12345678-1234-4234-8234-123456789abc"),
        ("lineage", "list", "--execution", "12345678"),
        ("execution", "get", "12345678-1234-4234-8234-123456789abc"),
    ],
)
def test_unknown_ids_exit_1_with_one_line(factflow: Run, args: tuple[str, ...]) -> None:
    line = one_error_line(factflow(*args), 1)
    assert "no " in line and "12345678" in line


# --- list ---------------------------------------------------------------------------


def _all_pages(factflow: Run, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        doc = ok_json(factflow(*args, "-o", "json", *(["--cursor", cursor] if cursor else [])))
        rows += doc["rows"]
        cursor = doc["next_cursor"]
        if cursor is None:
            return rows


def test_list_pages_cover_the_execution_once_in_a_stable_order(
    factflow: Run, projection: Dataset
) -> None:
    rows = _all_pages(factflow, "lineage", "list", "--execution", str(E1), "--limit", "10")
    want = sorted(projection.of(E1), key=_started_key)
    assert [r["id"] for r in rows] == [str(r["id"]) for r in want]
    assert len(rows) == 84 and len({r["id"] for r in rows}) == 84


def test_list_pages_reach_rows_without_a_start(factflow: Run, projection: Dataset) -> None:
    rows = _all_pages(factflow, "lineage", "list", "--execution", str(E2), "--limit", "1")
    assert [r["id"] for r in rows] == [
        str(projection.replay_done), str(projection.replay_pending), str(projection.replay_child),
        str(projection.placeholder),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value", "count"),
    [
        ("--status", "failed", 2),
        ("--adapter", "web_scraper", 42),
        ("--route", "sitemap_scraper", 84),
        ("--status", "pending", 0),
    ],
)
def test_list_filters(
    factflow: Run, projection: Dataset, option: str, value: str, count: int
) -> None:
    rows = _all_pages(factflow, "lineage", "list", "--execution", str(E1), option, value)
    assert len(rows) == count
    field = {"--status": "status", "--adapter": "adapter_name", "--route": "route_id"}[option]
    assert all(r[field] == value for r in rows)


def test_list_table_and_usage_errors(factflow: Run) -> None:
    result = factflow("lineage", "list", "--execution", str(E1), "--status", "failed")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(" failed " in line for line in lines[1:])
    bad = one_error_line(factflow("lineage", "list", "--execution", str(E1), "--status", "odd"), 2)
    assert "unknown status 'odd'" in bad
    cursor = one_error_line(
        factflow("lineage", "list", "--execution", str(E1), "--cursor", "zz"), 2
    )
    assert "invalid cursor" in cursor
    missing = factflow("lineage", "list")
    assert missing.exit_code == 2 and "--execution" in missing.output


# --- batch, stats, execution ------------------------------------------------------------


def test_batch_lists_its_rows_and_a_summary(factflow: Run, projection: Dataset) -> None:
    result = factflow("lineage", "batch", str(BATCHES[0])[:13])
    assert result.exit_code == 0, result.output
    *table, summary = result.stdout.splitlines()
    assert summary == f"batch {BATCHES[0]}: 21 rows, 20 completed, 1 failed"
    assert len(table) == 22 and sum(" failed " in line for line in table) == 1
    doc = ok_json(factflow("lineage", "batch", str(BATCHES[1]), "-o", "json"))
    assert (doc["completed"], doc["failed"], len(doc["rows"])) == (20, 1, 21)
    assert {r["id"] for r in doc["rows"]} == {
        str(i) for i, r in projection.rows.items() if r["batch_id"] == BATCHES[1]
    }
    assert "ambiguous" in one_error_line(factflow("lineage", "batch", "bbbbbbbb"), 2)


def test_stats_as_in_the_guide(factflow: Run) -> None:
    result = factflow("lineage", "stats", "--execution", str(E1))
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["ROUTE", "ADAPTER", "COUNT", "COMPLETED", "FAILED", "PENDING"],
        ["sitemap_scraper", "sitemap_parser", "1", "1", "0", "0"],
        ["sitemap_scraper", "url_expander", "1", "1", "0", "0"],
        ["sitemap_scraper", "web_scraper", "42", "40", "2", "0"],
        ["sitemap_scraper", "web_content_storage", "40", "40", "0", "0"],
    ]
    doc = ok_json(factflow("lineage", "stats", "--execution", str(E2)[:8], "-o", "json"))
    assert doc["execution_id"] == str(E2)
    assert [(r["adapter_name"], r["count"], r["pending"]) for r in doc["rows"]] == [
        ("web_scraper", 2, 1), ("web_content_storage", 1, 1),
    ]  # fmt: skip


def test_execution_get_shows_status_counts_and_replay(factflow: Run) -> None:
    first = factflow("execution", "get", str(E1))
    assert first.exit_code == 0
    assert ["status", "failed"] in [line.split() for line in first.stdout.splitlines()]
    assert "84 total: 82 completed, 2 failed, 0 cancelled, 0 pending" in first.stdout
    assert "replay" not in first.stdout
    replay = ok_json(factflow("execution", "get", str(E2)[:8], "-o", "json"))
    assert replay["replay_of"] == str(E1) and replay["replay_from_stage"] == "web_scraper"
    assert (replay["status"], replay["total"], replay["pending"]) == ("running", 3, 2)
    text = factflow("execution", "get", str(E2)).stdout
    assert f"replay_of          {E1}" in text and "replay_from_stage  web_scraper" in text


def test_execution_list_most_recent_first_and_paged(factflow: Run) -> None:
    doc = ok_json(factflow("execution", "list", "-o", "json"))
    assert [r["id"] for r in doc["rows"]] == [str(E2), str(E1)]
    rows = _all_pages(factflow, "execution", "list", "--limit", "1")
    assert [r["id"] for r in rows] == [str(E2), str(E1)]
    failed = ok_json(factflow("execution", "list", "--status", "failed", "-o", "json"))
    assert [r["id"] for r in failed["rows"]] == [str(E1)]
    table = factflow("execution", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["EXECUTION", "ID", "PIPELINE"] and len(table) == 3


# --- every command: json, no colour off a terminal, the database away --------------------


def every_command(data: Dataset) -> list[tuple[str, ...]]:
    return [
        ("lineage", "failures"),
        ("lineage", "failures", "--execution", str(E1)),
        ("lineage", "chain", str(FAILED[0])),
        ("lineage", "children", str(data.expander)),
        ("lineage", "get", str(FAILED[0])),
        ("lineage", "list", "--execution", str(E1)),
        ("lineage", "list", "--execution", str(E1), "--status", "failed"),
        ("lineage", "list", "--execution", str(E1), "--adapter", "web_scraper"),
        ("lineage", "batch", str(BATCHES[0])),
        ("lineage", "stats", "--execution", str(E1)),
        ("execution", "get", str(E1)),
        ("execution", "list"),
    ]


def test_every_command_prints_one_json_document_and_plain_tables(
    factflow: Run, projection: Dataset
) -> None:
    for args in every_command(projection):
        doc = ok_json(factflow(*args, "--output", "json"))
        assert isinstance(doc, dict) and doc, args
        table = factflow(*args)
        assert table.exit_code == 0 and "\x1b[" not in table.stdout, args


def test_every_command_with_the_database_down_is_one_line_exit_1(
    factflow: Run, projection: Dataset
) -> None:
    down = {"FACTFLOW_PG_READ_DSN": "postgresql://factflow_reader:pw@127.0.0.1:1/factflow"}
    for args in every_command(projection):
        line = one_error_line(factflow(*args, env=down), 1)
        assert "cannot connect to postgresql://factflow_reader:***@127.0.0.1:1/factflow" in line
        assert "pw" not in line.replace("postgresql", "")


def test_every_command_on_an_uninitialised_schema_says_run_init(
    factflow: Run, projection: Dataset, pg_dsn: str
) -> None:
    empty = {"FACTFLOW_PG_SCHEMA": "test_no_such_schema"}
    for args in every_command(projection):
        line = one_error_line(factflow(*args, env=empty), 1)
        assert "not initialised in schema 'test_no_such_schema'" in line, args
        assert line.endswith("run `factflow init`")


def test_the_real_entry_point(projection: Dataset, pg_read_dsn: str) -> None:
    env = {
        **os.environ,
        "FACTFLOW_PG_SCHEMA": projection.schema,
        "FACTFLOW_PG_READ_DSN": pg_read_dsn,
    }

    def factflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "factflow_lineage", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    stats = factflow("lineage", "stats", "--execution", str(E1))
    assert stats.returncode == 0, stats.stderr
    assert "web_scraper" in stats.stdout and "\x1b[" not in stats.stdout
    failures = factflow("lineage", "failures", "--output", "json")
    assert [r["id"] for r in json.loads(failures.stdout)["rows"]] == [
        str(FAILED[1]),
        str(FAILED[0]),
    ]
    execution = factflow("execution", "get", str(E1))
    assert execution.returncode == 0 and "failed" in execution.stdout
    bad = factflow("lineage", "get", "deadbeef")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and "ambiguous" in bad.stderr
    missing = factflow("lineage", "get", "12345678")
    assert missing.returncode == 1 and missing.stderr.startswith("factflow: error: no lineage id")
