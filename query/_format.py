"""Rendering for the CLI: aligned tables, key/value cards, the chain tree, JSON.

Pure string functions (the caller decides where text goes and whether colour
is on), so they are tested without a terminal or a database.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import typer

from ._models import (
    BatchResult,
    ChainResult,
    ExecutionRow,
    LineageRow,
    StatsRow,
    to_json,
)

_STATUS_COLOURS = {
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "pending": "yellow",
    "running": "yellow",
}


@dataclass(frozen=True)
class Style:
    """Whether to colour: on only when stdout is a terminal (and NO_COLOR is unset)."""

    colour: bool = False

    def status(self, text: str, status: str | None = None) -> str:
        colour = _STATUS_COLOURS.get(status or text)
        if not self.colour or colour is None:
            return text
        return typer.style(text, fg=colour, bold=(status or text) == "failed")

    def dim(self, text: str) -> str:
        return typer.style(text, dim=True) if self.colour else text

    def bold(self, text: str) -> str:
        return typer.style(text, bold=True) if self.colour else text


PLAIN = Style()
# The projector's note on a row whose parent link it dropped to break a cycle.
PARENT_CYCLE_NOTE = "factflow.parent_cycle"
_NEVER = datetime.max.replace(tzinfo=UTC)  # sorts rows without a start last


def dumps(value: Any) -> str:
    """One JSON document, stable keys in model order, for ``jq``."""
    return json.dumps(to_json(value), indent=2, ensure_ascii=False)


def timestamp(value: datetime | None) -> str:
    """A time in UTC to the millisecond, or ``-``."""
    if value is None:
        return "-"
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def untrusted(text: str) -> str:
    """Stored text as one printable line: control characters (a terminal's
    escape sequences, newlines) shown as escapes, never sent to the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# --- tables -------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One table column: header, how to get the cell, right-aligned (numbers) or not."""

    header: str
    cell: Callable[[Any], str]
    right: bool = False
    status: bool = False


def table(columns: Sequence[Column], rows: Sequence[Any], style: Style = PLAIN) -> str:
    """Columns aligned on the widest cell, two spaces apart; colour after padding."""
    cells = [[c.cell(row) for c in columns] for row in rows]
    widths = [max([len(c.header)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str], header: bool) -> str:
        out = []
        for i, (column, value) in enumerate(zip(columns, values, strict=True)):
            last = i == len(columns) - 1
            padded = (
                value.rjust(widths[i])
                if column.right
                else (value if last else value.ljust(widths[i]))
            )
            if header:
                padded = style.bold(padded)
            elif column.status:
                padded = style.status(padded, value)
            out.append(padded)
        return "  ".join(out).rstrip()

    return "\n".join([line([c.header for c in columns], True)] + [line(r, False) for r in cells])


def _error_class(row: LineageRow) -> str:
    return row.error.error_class if row.error is not None else "-"


FAILURE_COLUMNS = (
    Column("LINEAGE ID", lambda r: str(r.id)),
    Column("EXECUTION", lambda r: _text(r.execution_id)),
    Column("ROUTE", lambda r: _text(r.route_id)),
    Column("ADAPTER", lambda r: _text(r.adapter_name)),
    Column("FAILED AT", lambda r: timestamp(r.completed_at)),
    Column("ERROR", _error_class),
)

LINEAGE_COLUMNS = (
    Column("LINEAGE ID", lambda r: str(r.id)),
    Column("STATUS", lambda r: r.status, status=True),
    Column("ROUTE", lambda r: _text(r.route_id)),
    Column("ADAPTER", lambda r: _text(r.adapter_name)),
    Column("STARTED", lambda r: timestamp(r.started_at)),
    Column("COMPLETED", lambda r: timestamp(r.completed_at)),
    Column("PENDING", lambda r: str(r.children_pending), right=True),
    Column("ERROR", _error_class),
)

EXECUTION_COLUMNS = (
    Column("EXECUTION ID", lambda e: str(e.id)),
    Column("PIPELINE", lambda e: _text(e.pipeline)),
    Column("STATUS", lambda e: e.status, status=True),
    Column("STARTED", lambda e: timestamp(e.started_at)),
    Column("FINISHED", lambda e: timestamp(e.finished_at)),
    Column("ROWS", lambda e: str(e.total), right=True),
    Column("FAILED", lambda e: str(e.failed), right=True),
    Column("REPLAY OF", lambda e: _text(e.replay_of)),
)


def stats_table(rows: Sequence[StatsRow], style: Style = PLAIN) -> str:
    """The guide's ``ROUTE ADAPTER COUNT COMPLETED FAILED`` plus PENDING (and CANCELLED if any)."""
    columns = [
        Column("ROUTE", lambda s: s.route_id),
        Column("ADAPTER", lambda s: s.adapter_name),
        Column("COUNT", lambda s: str(s.count), right=True),
        Column("COMPLETED", lambda s: str(s.completed), right=True),
        Column("FAILED", lambda s: str(s.failed), right=True),
        Column("PENDING", lambda s: str(s.pending), right=True),
    ]
    if any(s.cancelled for s in rows):
        columns.append(Column("CANCELLED", lambda s: str(s.cancelled), right=True))
    return table(columns, rows, style)


def batch_summary(result: BatchResult) -> str:
    """``batch X: 100 rows, 98 completed, 2 failed`` (pending and cancelled when there are any)."""
    parts = [f"{result.completed} completed", f"{result.failed} failed"]
    if result.cancelled:
        parts.append(f"{result.cancelled} cancelled")
    if result.pending:
        parts.append(f"{result.pending} pending")
    return f"batch {result.batch_id}: {len(result.rows)} rows, " + ", ".join(parts)


# --- cards --------------------------------------------------------------------------


def _card(pairs: Sequence[tuple[str, str]], style: Style) -> str:
    width = max(len(k) for k, _ in pairs)
    lines = []
    for key, value in pairs:
        head, *rest = value.split("\n") if value else [""]
        lines.append(f"{style.bold(key.ljust(width))}  {head}".rstrip())
        lines.extend(f"{' ' * width}  {more}".rstrip() for more in rest)
    return "\n".join(lines)


def lineage_card(row: LineageRow, style: Style = PLAIN) -> str:
    """Every field of one row; the error with its traceback; metadata as JSON."""
    pairs = [
        ("id", str(row.id)),
        ("status", style.status(row.status)),
        ("execution", _text(row.execution_id)),
        ("route", _text(row.route_id)),
        ("adapter", _text(row.adapter_name)),
        ("parent", _text(row.parent_id)),
        ("root", _text(row.root_id)),
        ("batch", _text(row.batch_id)),
        ("started", timestamp(row.started_at)),
        ("completed", timestamp(row.completed_at)),
        ("input_hash", _text(row.input_hash)),
        ("output_hash", _text(row.output_hash)),
        ("input_key", _text(row.input_key)),
        (
            "children",
            f"{row.children_registered} recorded, {row.children_settled} settled, "
            f"{row.children_pending} pending"
            + (f" (expects {row.children_expected})" if row.children_expected is not None else ""),
        ),
        ("settled", "yes" if row.settled else "no"),
        ("descendants_failed", str(row.descendants_failed)),
    ]
    if not row.known:
        pairs.append(("known", "no: only later events seen, its start is not recorded yet"))
    if row.repaired is not None:
        pairs.append(("repaired", untrusted(row.repaired)))
    if row.error is not None:
        pairs.append(("error", style.status(row.error.error_class, "failed")))
        pairs.append(("message", row.error.message))
        if row.error.traceback:
            pairs.append(("traceback", row.error.traceback.rstrip("\n")))
    pairs.append(("metadata", json.dumps(row.metadata, indent=2, sort_keys=True, default=str)))
    return _card(pairs, style)


def execution_card(row: ExecutionRow, style: Style = PLAIN) -> str:
    """Status, pipeline, times, counts, and the replay it is, if it is one."""
    pairs = [
        ("id", str(row.id)),
        ("pipeline", _text(row.pipeline)),
        ("status", style.status(row.status)),
        ("started", timestamp(row.started_at)),
        ("finished", timestamp(row.finished_at)),
    ]
    if row.started_at is not None and row.finished_at is not None:
        pairs.append(("duration", f"{(row.finished_at - row.started_at).total_seconds():.3f} s"))
    pairs.append(
        (
            "rows",
            f"{row.total} total: {row.completed} completed, {row.failed} failed, "
            f"{row.cancelled} cancelled, {row.pending} pending",
        )
    )
    if row.replay_of is not None:
        pairs.append(("replay_of", str(row.replay_of)))
        pairs.append(("replay_from_stage", _text(row.replay_from_stage)))
    if row.error:
        pairs.append(("error", row.error))
    if row.repaired is not None:
        pairs.append(("repaired", untrusted(row.repaired)))
    return _card(pairs, style)


# --- the chain tree -----------------------------------------------------------------


def _node_line(row: LineageRow, target: UUID, style: Style) -> str:
    parts = [
        str(row.id),
        style.status(row.status.upper() if row.status == "failed" else row.status, row.status),
        f"{_text(row.route_id)}/{_text(row.adapter_name)}",
        f"{timestamp(row.started_at)} -> {timestamp(row.completed_at)}",
    ]
    if row.children_pending:
        parts.append(f"pending children: {row.children_pending}")
    if row.error is not None:
        parts.append(style.status(row.error.error_class, "failed"))
    if not row.known:
        parts.append("(start not recorded)")
    dropped = row.metadata.get(PARENT_CYCLE_NOTE)
    if isinstance(dropped, dict):
        # The projector broke a parent cycle here (consumer/_cycles.py).
        parts.append(f"(parent {dropped.get('parent_id')} dropped: a parent cycle)")
    line = "  ".join(parts)
    if row.id == target:
        line = style.bold(line) + "   <== this row"
    return line


def chain_tree(result: ChainResult, style: Style = PLAIN) -> str:
    """Ancestors root first, then the row's descendants as a tree; failing rows marked ``x``.

    Drawn without recursion and each row once, whatever the parent links
    hold: a child already drawn (the links form a cycle, in data of an older
    release) is named, not drawn again.
    """
    by_id = {n.id: n for n in result.nodes}
    kids: dict[UUID, list[LineageRow]] = {}
    for node in by_id.values():
        if node.parent_id is not None and node.parent_id in by_id:
            kids.setdefault(node.parent_id, []).append(node)
    for siblings in kids.values():
        siblings.sort(key=lambda n: (n.started_at or _NEVER, str(n.id)))
    lines: list[str] = []
    drawn: set[UUID] = set()
    # (node, prefix, connector, prefix of its children), the next to draw on top.
    todo: list[tuple[LineageRow, str, str, str]] = []
    for top in by_id.values():
        if top.id in drawn:
            continue
        if top.parent_id is None:
            pass
        elif top.parent_id in by_id:
            lines.append(
                style.dim(f"(parent {top.parent_id} is below: the parent links form a cycle)")
            )
        else:
            # Either the walk stopped below the root, or the parent's events never arrived.
            why = (
                f"and above: cut at --max-nodes {result.max_nodes}"
                if result.truncated
                else "is not recorded"
            )
            lines.append(style.dim(f"(parent {top.parent_id} {why})"))
        todo.append((top, "", "", ""))
        while todo:
            node, prefix, connector, child_prefix = todo.pop()
            if node.id in drawn:
                lines.append(f"{prefix}{connector}{style.dim(f'{node.id} (drawn above: a cycle)')}")
                continue
            drawn.add(node.id)
            mark = style.status("x", "failed") if node.status == "failed" else "o"
            lines.append(f"{prefix}{connector}{mark} {_node_line(node, result.target, style)}")
            children = kids.get(node.id, [])
            below = prefix + child_prefix
            # Pushed last child first: the first child is drawn next.
            for i in range(len(children) - 1, -1, -1):
                last = i == len(children) - 1
                todo.append(
                    (children[i], below, "└─ " if last else "├─ ", "   " if last else "│  ")
                )
    failed = sum(1 for n in by_id.values() if n.status == "failed")
    summary = f"{len(by_id)} rows in the chain, {failed} failed"
    lines.append(style.dim(summary))
    if result.truncated:
        lines.append(
            f"... cut at --max-nodes {result.max_nodes}: the chain has more rows "
            "(raise --max-nodes to see them)"
        )
    return "\n".join(lines)
