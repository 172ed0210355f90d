"""The projection's semantics, computed directly from a set of events.

No batches, no deltas, no SQL: the tables are a function of the *set* of
events, written as plainly as possible, so that the real projector (which
works incrementally, batch by batch) can be checked against it.

Rules (the same as ``factflow_lineage.consumer``):

* every event is first repaired as ``factflow_lineage._repair.repair_event``
  does (NUL, lone surrogates, NaN, times and counts out of range, long
  routes), its note in the start's metadata, the terminal event's in the
  row's error (``repaired``), the execution finish's in its error text;

* the start of a row is its start event with the smallest (occurred_at,
  event_id); its terminal event the one with the largest (rank, occurred_at,
  event_id), rank failed 3 > cancelled 2 > completed 1 (an execution's finish
  likewise);
* a row is known when it has a start; a row named only by a terminal event,
  or only as the parent of a known row, is a placeholder. A placeholder's
  execution is its terminal event's (none without one);
* registered = known rows naming the row as parent; settled = terminal and
  settled children >= max(expected, registered) for a completed row, >=
  registered for a failed or cancelled one; descendants_failed = failed
  rows below; what a known child contributes to its parent is recorded on it
  (contrib_*);
* parent cycles (only a hostile producer makes one): in every cycle of the
  links the winning starts name, the row with the smallest (started_at, id)
  keeps no parent, and its metadata notes the link (``NOTE``);
* executions: every id of an execution event or of a known row; counts over
  the known rows; lineage_stats: known rows per (execution, route, adapter).

``dump`` reads the real tables in the same shape, so the two compare with ``==``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from factflow_lineage._repair import join_notes, repair_event, split_note

LINEAGE_COLUMNS = (
    "id", "execution_id", "root_id", "parent_id", "route_id", "adapter_name", "status",
    "input_hash", "output_hash", "error", "cancel_reason", "started_at", "completed_at",
    "batch_id", "input_key", "metadata", "children_expected", "children_registered",
    "children_settled", "descendants_failed", "start_event_id", "terminal_event_id",
    "contrib_parent", "contrib_settled", "contrib_failed", "known", "children_pending",
    "settled", "failed_at",
)  # fmt: skip
EXECUTION_COLUMNS = (
    "id", "pipeline", "status", "started_at", "finished_at", "replay_of", "replay_from_stage",
    "error", "metadata", "start_event_id", "finish_event_id", "total", "completed", "failed",
    "cancelled", "pending", "unsettled", "known", "settled",
)  # fmt: skip
STATS_COLUMNS = (
    "execution_id", "route_id", "adapter_name", "count", "completed", "failed", "cancelled",
    "pending",
)  # fmt: skip
TABLES = {
    "lineage": LINEAGE_COLUMNS,
    "executions": EXECUTION_COLUMNS,
    "lineage_stats": STATS_COLUMNS,
}

Tables = dict[str, list[tuple[Any, ...]]]

_RANK = {"completed": 1, "cancelled": 2, "failed": 3}
_TERMINAL = {
    "INVOCATION_COMPLETED": "completed",
    "INVOCATION_FAILED": "failed",
    "INVOCATION_CANCELLED": "cancelled",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REPAIRED = {"INVOCATION_STARTED", *_TERMINAL, "EXECUTION_STARTED", "EXECUTION_FINISHED"}


def _u(b: bytes | None) -> UUID | None:
    return None if b is None else UUID(bytes=b)


def _ts(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _scalar(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v


def _json(m: Mapping[str, Any]) -> Any:
    # What jsonb gives back: the JSON round trip of the value.
    return json.loads(json.dumps({k: _scalar(v) for k, v in m.items()}))


def project(events: Iterable[Mapping[str, Any]]) -> Tables:
    """The three tables for this set of events (duplicates and order are irrelevant)."""
    start: dict[bytes, Mapping[str, Any]] = {}
    end: dict[bytes, tuple[str, Mapping[str, Any]]] = {}
    x_start: dict[bytes, Mapping[str, Any]] = {}
    x_end: dict[bytes, tuple[str, Mapping[str, Any]]] = {}

    def earlier(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        return (a["occurred_at"], a["event_id"]) < (b["occurred_at"], b["event_id"])

    def stronger(a: tuple[str, Mapping[str, Any]], b: tuple[str, Mapping[str, Any]]) -> bool:
        return (_RANK[a[0]], a[1]["occurred_at"], a[1]["event_id"]) > (
            _RANK[b[0]],
            b[1]["occurred_at"],
            b[1]["event_id"],
        )

    # id(event) -> the note of a repaired terminal event; the copies are kept
    # alive so that no id is reused.
    notes: dict[int, str] = {}
    repaired: list[Mapping[str, Any]] = []
    for e in events:
        if e["event_type"] in _REPAIRED:
            # What the tables cannot hold is repaired as the projector does.
            e, note = repair_event(e)
            repaired.append(e)
            if note is not None:
                notes[id(e)] = note
        kind, p = e["event_type"], e["payload"]
        if kind == "INVOCATION_STARTED":
            cur = start.get(p["lineage_id"])
            if cur is None or earlier(e, cur):
                start[p["lineage_id"]] = e
        elif kind in _TERMINAL:
            cand = (_TERMINAL[kind], e)
            cur_end = end.get(p["lineage_id"])
            if cur_end is None or stronger(cand, cur_end):
                end[p["lineage_id"]] = cand
        elif kind == "EXECUTION_STARTED":
            cur = x_start.get(p["execution_id"])
            if cur is None or earlier(e, cur):
                x_start[p["execution_id"]] = e
        elif kind == "EXECUTION_FINISHED":
            cand = (p["status"].lower(), e)
            cur_end = x_end.get(p["execution_id"])
            if cur_end is None or stronger(cand, cur_end):
                x_end[p["execution_id"]] = cand

    rows: dict[bytes, dict[str, Any]] = {}
    for lid in start.keys() | end.keys():
        r: dict[str, Any] = dict.fromkeys(LINEAGE_COLUMNS)
        r.update(id=lid, status="pending", known=lid in start)
        if lid in start:
            e = start[lid]
            p = e["payload"]
            meta = dict(p["metadata"])
            if p["input_key"] is not None:
                meta["input_key"] = p["input_key"]
            r.update(
                execution_id=p["execution_id"], root_id=p["root_id"], parent_id=p["parent_id"],
                route_id=p["route_id"], adapter_name=p["adapter_name"],
                input_hash=p["input_hash"], batch_id=p["batch_id"], input_key=p["input_key"],
                metadata=_json(meta), started_at=_ts(e["occurred_at"]),
                start_event_id=e["event_id"],
            )  # fmt: skip
        if lid in end:
            status, e = end[lid]
            p = e["payload"]
            # A terminal note: the recorder's (a traceback's or reason's last
            # line), then the projector's; kept in the error column.
            reason = traceback = lifted = None
            if status == "cancelled":
                reason, lifted = split_note(p["reason"])
            elif status == "failed":
                traceback, lifted = split_note(p["traceback"])
            note = join_notes(lifted, notes.get(id(e)))
            error: dict[str, Any] | None = {"repaired": note} if note is not None else None
            if status == "failed":
                error = {
                    "class": p["error_class"],
                    "message": p["error_message"],
                    "traceback": traceback,
                    **(error or {}),
                }
            r.update(
                status=status,
                completed_at=_ts(e["occurred_at"]),
                terminal_event_id=e["event_id"],
                children_expected=p["children"],
                output_hash=p["output_hash"] if status == "completed" else None,
                cancel_reason=reason,
                error=error,
            )
            if lid not in start:
                r["execution_id"] = p["execution_id"]
        rows[lid] = r

    for lid in _cycle_breaks(start):
        r = rows[lid]
        claimed = r["parent_id"]
        r["parent_id"] = None
        r["metadata"] = {
            **r["metadata"],
            NOTE: {"parent_id": str(UUID(bytes=claimed)), "reason": NOTE_REASON},
        }

    children: dict[bytes, list[bytes]] = defaultdict(list)
    for r in list(rows.values()):
        if r["known"] and r["parent_id"] is not None:
            children[r["parent_id"]].append(r["id"])
            if r["parent_id"] not in rows:
                placeholder = dict.fromkeys(LINEAGE_COLUMNS)
                placeholder.update(id=r["parent_id"], status="pending", known=False)
                rows[r["parent_id"]] = placeholder

    done: set[bytes] = set()

    def settle(lid: bytes) -> None:
        if lid in done:
            return
        r = rows[lid]
        kids = [rows[k] for k in children.get(lid, [])]
        for k in kids:
            settle(k["id"])
        r["children_registered"] = len(kids)
        r["children_settled"] = sum(1 for k in kids if k["settled"])
        r["descendants_failed"] = sum(
            (k["status"] == "failed") + k["descendants_failed"] for k in kids
        )
        # A completed row waits for the children it announced too; a failed or
        # cancelled one only for those that registered.
        announced = (r["children_expected"] or 0) if r["status"] == "completed" else 0
        need = max(announced, r["children_registered"])
        r["children_pending"] = need - r["children_settled"]
        r["settled"] = r["status"] != "pending" and r["children_settled"] >= need
        r["failed_at"] = r["completed_at"] if r["status"] == "failed" else None
        parent = r["parent_id"] if r["known"] else None
        r["contrib_parent"] = parent
        r["contrib_settled"] = parent is not None and r["settled"]
        r["contrib_failed"] = (r["status"] == "failed") + r["descendants_failed"] if parent else 0
        done.add(lid)

    for lid in rows:
        settle(lid)

    stats: dict[tuple[bytes, str, str], list[int]] = defaultdict(lambda: [0] * 5)
    counts: dict[bytes, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows.values():
        if not r["known"]:
            continue
        s = stats[(r["execution_id"], r["route_id"], r["adapter_name"])]
        s[0] += 1
        s[1 + ("completed", "failed", "cancelled", "pending").index(r["status"])] += 1
        c = counts[r["execution_id"]]
        c["total"] += 1
        c[r["status"]] += 1
        c["unsettled"] += not r["settled"]

    executions = []
    for xid in x_start.keys() | x_end.keys() | counts.keys():
        x: dict[str, Any] = dict.fromkeys(EXECUTION_COLUMNS)
        x.update(id=xid, status="running", known=xid in x_start)
        if xid in x_start:
            e = x_start[xid]
            p = e["payload"]
            x.update(
                pipeline=p["pipeline"], metadata=_json(p["metadata"]),
                replay_of=p.get("replay_of"), replay_from_stage=p.get("replay_from_stage"),
                started_at=_ts(e["occurred_at"]), start_event_id=e["event_id"],
            )  # fmt: skip
        if xid in x_end:
            status, e = x_end[xid]
            x.update(
                status=status,
                error=e["payload"]["error"],
                finished_at=_ts(e["occurred_at"]),
                finish_event_id=e["event_id"],
            )
        for name in ("total", "completed", "failed", "cancelled", "pending", "unsettled"):
            x[name] = counts[xid][name] if xid in counts else 0
        x["settled"] = x["status"] != "running" and x["unsettled"] == 0
        executions.append(x)

    return {
        "lineage": sorted(_row(r, LINEAGE_COLUMNS) for r in rows.values()),
        "executions": sorted(_row(x, EXECUTION_COLUMNS) for x in executions),
        "lineage_stats": sorted((_u(k[0]), k[1], k[2], *v) for k, v in stats.items()),
    }


NOTE = "factflow.parent_cycle"
NOTE_REASON = (
    "parent link dropped: it closes a cycle of parent links, and this row started first in it"
)


def _cycle_breaks(start: Mapping[bytes, Mapping[str, Any]]) -> set[bytes]:
    """The rows whose link the projection drops: the earliest start of each cycle."""
    parent = {lid: e["payload"]["parent_id"] for lid, e in start.items()}
    breaks: set[bytes] = set()
    cleared: set[bytes] = set()  # rows known not to lead into an unseen cycle
    for lid in parent:
        path: list[bytes] = []
        at: bytes | None = lid
        while at is not None and at in parent and at not in cleared and at not in path:
            path.append(at)
            at = parent[at]
        if at is not None and at in path:
            cycle = path[path.index(at) :]
            breaks.add(min(cycle, key=lambda m: (start[m]["occurred_at"], m)))
        cleared.update(path)
    return breaks


_UUID_COLUMNS = {
    "id", "execution_id", "root_id", "parent_id", "batch_id", "start_event_id",
    "terminal_event_id", "contrib_parent", "replay_of", "finish_event_id",
}  # fmt: skip


def _row(r: Mapping[str, Any], columns: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(_u(r[c]) if c in _UUID_COLUMNS else r[c] for c in columns)


def dump(conn: psycopg.Connection[Any], schema: str) -> Tables:
    """The three tables as stored, every column, sorted by key."""
    out: Tables = {}
    for table, columns in TABLES.items():
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(schema, table)
        )
        # Sorted here, not by ORDER BY: text order in the database follows its collation.
        out[table] = sorted((tuple(row) for row in conn.execute(query)), key=lambda r: r[:3])
    return out


def differences(want: Tables, got: Tables) -> str:
    """What differs between two dumps, row by row and column by column (for assert messages)."""
    lines: list[str] = []
    for table, columns in TABLES.items():
        wanted = {row[0] if table != "lineage_stats" else row[:3]: row for row in want[table]}
        stored = {row[0] if table != "lineage_stats" else row[:3]: row for row in got[table]}
        for key in sorted(wanted.keys() | stored.keys(), key=str):
            w, g = wanted.get(key), stored.get(key)
            if w == g:
                continue
            if w is None or g is None:
                lines.append(f"{table} {key}: {'only stored' if w is None else 'missing'}")
                continue
            changed = [
                f"{c}={g[i]!r} (model: {w[i]!r})" for i, c in enumerate(columns) if w[i] != g[i]
            ]
            lines.append(f"{table} {key}: " + ", ".join(changed))
    return "\n".join(lines)
