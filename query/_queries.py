"""Every read-side query, in one place: the CLI and the REST API both call these.

Each function takes an open connection whose ``search_path`` points at the
projection's schema and returns frozen rows from ``_models``. Ids arrive as
the operator typed them (a UUID or a prefix of one) and are resolved here.

Listings are keyset-paginated (never OFFSET): a page ends with the sort key of
its last row, and the next page starts strictly after it, so rows inserted
meanwhile neither shift nor repeat what an operator already saw.

Queries returning many rows ask for them in binary: UUIDs and timestamps then
need no text parsing, which is most of the client's time on a 1,000-node chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, Protocol, TypeVar
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import PoolTimeout

from factflow_lineage._repair import NOTE_KEY, join_notes
from factflow_lineage.db import first_line
from factflow_lineage.errors import DatabaseUnavailable, NotFound, UsageError

from ._ids import Cursor, IdPattern, decode_cursor, encode_cursor, parse_id
from ._models import (
    BatchResult,
    ChainResult,
    ErrorInfo,
    ExecutionRow,
    LineageRow,
    Page,
    StatsResult,
    StatsRow,
)

Conn = psycopg.Connection[Any]


class _Row(Protocol):
    @property
    def id(self) -> UUID: ...


R = TypeVar("R", bound=_Row)

STATUSES = ("pending", "completed", "failed", "cancelled")
EXECUTION_STATUSES = ("running", "completed", "failed", "cancelled")
MAX_LIMIT = 1000
DEFAULT_MAX_NODES = 1000
# The most rows one chain answer holds (the API's and the CLI's bound too).
MAX_NODES = 100_000
# Ancestors are walked to the root; no pipeline is this deep (real routes are
# tens of stages), and the bound keeps the walk's path check (quadratic in the
# depth) small on hostile data.
_MAX_DEPTH = 10_000
_CANDIDATES = 5

_LINEAGE_NAMES = (
    "id", "execution_id", "root_id", "parent_id", "route_id", "adapter_name", "status",
    "input_hash", "output_hash", "error", "cancel_reason", "started_at", "completed_at",
    "batch_id", "input_key", "metadata", "children_expected", "children_registered",
    "children_settled", "children_pending", "descendants_failed", "settled", "known",
)  # fmt: skip
_LINEAGE_COLUMNS = sql.SQL(", ".join(f"l.{name}" for name in _LINEAGE_NAMES))
_EXECUTION_COLUMNS = sql.SQL(
    "e.id, e.pipeline, e.status, e.started_at, e.finished_at, e.replay_of,"
    " e.replay_from_stage, e.error, e.metadata, e.total, e.completed, e.failed, e.cancelled,"
    " e.pending, e.unsettled, e.settled, e.known"
)


@contextmanager
def database_errors(schema: str) -> Iterator[None]:
    """Translate driver errors into ours: the one boundary for the read side.

    A missing table means the projection was never initialised in ``schema``
    (a missing column, that it predates a migration); anything operational
    (refused, dropped, timed out) is the database being unavailable. Each
    becomes one line for the operator, never a driver traceback.
    """
    try:
        yield
    except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName) as e:
        raise DatabaseUnavailable(
            f"the lineage projection is not initialised in schema {schema!r} "
            f"({first_line(e)}): run `factflow init`"
        ) from e
    except pg_errors.UndefinedColumn as e:
        raise DatabaseUnavailable(
            f"the lineage projection in schema {schema!r} is older than this release "
            f"({first_line(e)}): run `factflow init` to migrate it"
        ) from e
    except pg_errors.InsufficientPrivilege as e:
        raise DatabaseUnavailable(
            f"the read-only role may not read schema {schema!r}: {first_line(e)}"
        ) from e
    except pg_errors.QueryCanceled as e:
        raise DatabaseUnavailable(f"query cancelled: {first_line(e)}") from e
    except PoolTimeout as e:
        raise DatabaseUnavailable(f"no database connection available: {first_line(e)}") from e
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(f"database unavailable: {first_line(e)}") from e
    except psycopg.Error as e:
        raise DatabaseUnavailable(f"database error: {first_line(e)}") from e


# --- rows -----------------------------------------------------------------------


def _lineage(row: Sequence[Any]) -> LineageRow:
    (
        ident, execution_id, root_id, parent_id, route_id, adapter_name, status, input_hash,
        output_hash, error, cancel_reason, started_at, completed_at, batch_id, input_key,
        metadata, expected, registered, settled_children, pending_children, descendants_failed,
        settled, known,
    ) = row  # fmt: skip
    meta = dict(metadata or {})
    if input_key is not None:
        # The guide's workflow reads the stored input's key as metadata.input_key.
        meta.setdefault("input_key", input_key)
    return LineageRow(
        id=ident,
        execution_id=execution_id,
        root_id=root_id,
        parent_id=parent_id,
        route_id=route_id,
        adapter_name=adapter_name,
        status=status,
        input_hash=input_hash,
        output_hash=output_hash,
        error=_error(error),
        cancel_reason=cancel_reason,
        started_at=started_at,
        completed_at=completed_at,
        batch_id=batch_id,
        input_key=input_key,
        metadata=meta,
        children_expected=expected,
        children_registered=registered,
        children_settled=settled_children,
        children_pending=pending_children,
        descendants_failed=descendants_failed,
        settled=settled,
        known=known,
        repaired=_notes(meta.get(NOTE_KEY), (error or {}).get("repaired")),
    )


def _notes(*notes: Any) -> str | None:
    """The repair notes of a row (see factflow_lineage._repair), as one text."""
    joined: str | None = join_notes(*(str(n) for n in notes if n is not None))
    return joined


def _error(value: Any) -> ErrorInfo | None:
    # A completed or cancelled row's error holds only a repair note: no error.
    if not value or "class" not in value:
        return None
    return ErrorInfo(
        error_class=str(value.get("class") or ""),
        message=str(value.get("message") or ""),
        traceback=value.get("traceback"),
    )


def _execution(row: Sequence[Any]) -> ExecutionRow:
    (
        ident, pipeline, status, started_at, finished_at, replay_of, replay_from_stage, error,
        metadata, total, completed, failed, cancelled, pending, unsettled, settled, known,
    ) = row  # fmt: skip
    return ExecutionRow(
        id=ident,
        pipeline=pipeline,
        status=status,
        started_at=started_at,
        finished_at=finished_at,
        replay_of=replay_of,
        replay_from_stage=replay_from_stage,
        error=error,
        metadata=dict(metadata or {}),
        repaired=_notes((metadata or {}).get(NOTE_KEY)),
        total=total,
        completed=completed,
        failed=failed,
        cancelled=cancelled,
        pending=pending,
        unsettled=unsettled,
        settled=settled,
        known=known,
    )


# --- ids --------------------------------------------------------------------------


def _resolve(conn: Conn, text: str | UUID, *, table: str, column: str, what: str) -> UUID:
    """The one id ``text`` stands for; a prefix is a range scan on ``column``'s index."""
    if isinstance(text, UUID):
        return text
    pattern: IdPattern = parse_id(text, what=what)
    if pattern.exact is not None:
        return pattern.exact
    query = sql.SQL(
        "SELECT DISTINCT {col} FROM {table} WHERE {col} BETWEEN %s AND %s ORDER BY 1 LIMIT %s"
    ).format(col=sql.Identifier(column), table=sql.Identifier(table))
    found = [r[0] for r in conn.execute(query, (pattern.low, pattern.high, _CANDIDATES + 1))]
    if not found:
        raise NotFound(f"no {what} starts with {pattern.text!r}")
    if len(found) > 1:
        listed = ", ".join(str(u) for u in found[:_CANDIDATES])
        more = ", ..." if len(found) > _CANDIDATES else ""
        raise UsageError(f"{what} prefix {pattern.text!r} is ambiguous: {listed}{more}")
    only: UUID = found[0]
    return only


def resolve_lineage_id(conn: Conn, text: str | UUID) -> UUID:
    """A lineage id from a UUID or a unique prefix (NotFound, or UsageError when ambiguous)."""
    return _resolve(conn, text, table="lineage", column="id", what="lineage id")


def resolve_execution_id(conn: Conn, text: str | UUID) -> UUID:
    """An execution id from a UUID or a unique prefix."""
    return _resolve(conn, text, table="executions", column="id", what="execution id")


def resolve_batch_id(conn: Conn, text: str | UUID) -> UUID:
    """A batch id from a UUID or a unique prefix."""
    return _resolve(conn, text, table="lineage", column="batch_id", what="batch id")


# --- keyset pages -------------------------------------------------------------------


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"limit must be 1..{MAX_LIMIT}, not {limit}")
    return limit


@dataclass(frozen=True)
class _Source(Generic[R]):
    """A table as the listings read it: its SELECT, alias and row maker."""

    select: sql.Composable
    alias: str
    make: Callable[[Sequence[Any]], R]


_LINEAGE = _Source(sql.SQL("SELECT {} FROM lineage l").format(_LINEAGE_COLUMNS), "l", _lineage)
_EXECUTIONS = _Source(
    sql.SQL("SELECT {} FROM executions e").format(_EXECUTION_COLUMNS), "e", _execution
)


def _page(
    conn: Conn,
    source: _Source[R],
    *,
    kind: str,
    where: Sequence[tuple[str, tuple[Any, ...]]],
    ts: Literal["started_at", "failed_at"],
    direction: Literal["asc", "desc"],
    limit: int,
    cursor: str | None,
    with_untimed: bool = True,
) -> Page[R]:
    """One page ordered by (``ts``, id), rows without ``ts`` last.

    Two index range scans rather than one ``ORDER BY ... NULLS LAST`` with an OR
    in the keyset condition, which no index can serve: first the rows with a
    timestamp after the cursor, then, once they run out, the rows without one.
    A cursor without a timestamp was cut among the latter: the next page
    continues there, after its id.
    """
    _check_limit(limit)
    after = decode_cursor(cursor, kind=kind) if cursor else None
    cmp = sql.SQL(">" if direction == "asc" else "<")
    order = sql.SQL("ASC" if direction == "asc" else "DESC")
    ts_col = sql.Identifier(source.alias, ts)
    id_col = sql.Identifier(source.alias, "id")
    filters = [sql.SQL(clause) for clause, _ in where]
    params: list[Any] = [value for _, values in where for value in values]
    rows: list[R] = []
    if after is None or after.at is not None:
        keyed = [*filters, sql.SQL("{} IS NOT NULL").format(ts_col)]
        keyed_params = list(params)
        if after is not None:
            keyed.append(sql.SQL("({}, {}) {} (%s, %s)").format(ts_col, id_col, cmp))
            keyed_params += [after.at, after.id]
        query = sql.SQL("{select} WHERE {where} ORDER BY {ts} {o}, {id} {o} LIMIT %s").format(
            select=source.select, where=sql.SQL(" AND ").join(keyed), ts=ts_col, id=id_col, o=order
        )
        keyed_rows = conn.execute(query, [*keyed_params, limit + 1], binary=True)
        rows += [source.make(r) for r in keyed_rows]
    if with_untimed and len(rows) <= limit:
        untimed_where = [*filters, sql.SQL("{} IS NULL").format(ts_col)]
        untimed_params = list(params)
        if after is not None and after.at is None:
            untimed_where.append(sql.SQL("{} {} %s").format(id_col, cmp))
            untimed_params.append(after.id)
        query = sql.SQL("{select} WHERE {where} ORDER BY {id} {o} LIMIT %s").format(
            select=source.select, where=sql.SQL(" AND ").join(untimed_where), id=id_col, o=order
        )
        more = conn.execute(query, [*untimed_params, limit + 1 - len(rows)], binary=True)
        rows += [source.make(r) for r in more]
    if len(rows) <= limit:
        return Page(rows=tuple(rows), next_cursor=None)
    last = rows[limit - 1]
    # failed_at is completed_at of a failed row (a generated column).
    at: datetime | None = getattr(last, "completed_at" if ts == "failed_at" else ts)
    return Page(
        rows=tuple(rows[:limit]),
        next_cursor=encode_cursor(Cursor(kind=kind, at=at, id=last.id)),
    )


def _check_status(status: str | None, allowed: tuple[str, ...]) -> None:
    if status is not None and status not in allowed:
        raise UsageError(f"unknown status {status!r}: one of {', '.join(allowed)}")


# --- lineage ------------------------------------------------------------------------


def get_lineage(conn: Conn, ref: str | UUID) -> LineageRow:
    """One lineage row, every field (NotFound when there is none)."""
    ident = resolve_lineage_id(conn, ref)
    row = conn.execute(sql.SQL("{} WHERE l.id = %s").format(_LINEAGE.select), (ident,)).fetchone()
    if row is None:
        raise NotFound(f"no lineage row {ident}")
    return _lineage(row)


def _require_lineage(conn: Conn, ref: str | UUID) -> UUID:
    ident = resolve_lineage_id(conn, ref)
    if conn.execute("SELECT 1 FROM lineage WHERE id = %s", (ident,)).fetchone() is None:
        raise NotFound(f"no lineage row {ident}")
    return ident


def list_lineage(
    conn: Conn,
    *,
    execution: str | UUID,
    status: str | None = None,
    adapter: str | None = None,
    route: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[LineageRow]:
    """Rows of one execution, oldest first, filtered; keyset-paginated."""
    _check_status(status, STATUSES)
    where: list[tuple[str, tuple[Any, ...]]] = [
        ("l.execution_id = %s", (resolve_execution_id(conn, execution),))
    ]
    if status is not None:
        where.append(("l.status = %s", (status,)))
        if status == "failed":
            # Lets the planner use the partial failure index of the execution.
            where.append(("l.failed_at IS NOT NULL", ()))
    if adapter is not None:
        where.append(("l.adapter_name = %s", (adapter,)))
    if route is not None:
        where.append(("l.route_id = %s", (route,)))
    return _page(
        conn,
        _LINEAGE,
        kind="lineage",
        where=where,
        ts="started_at",
        direction="asc",
        limit=limit,
        cursor=cursor,
    )


def children(
    conn: Conn, ref: str | UUID, *, limit: int = 100, cursor: str | None = None
) -> Page[LineageRow]:
    """The rows a row produced (its direct children), oldest first."""
    parent = _require_lineage(conn, ref)
    return _page(
        conn,
        _LINEAGE,
        kind="lineage.children",
        where=[("l.parent_id = %s", (parent,))],
        ts="started_at",
        direction="asc",
        limit=limit,
        cursor=cursor,
    )


def failures(
    conn: Conn,
    *,
    execution: str | UUID | None = None,
    since: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[LineageRow]:
    """Failed rows, most recent failure first, optionally of one execution and recent ones."""
    # failed_at (completed_at of failed rows only) is what the failure indexes
    # cover: no index mentions status or completed_at, so that a completion
    # stays a HOT update in the projector. Every failed row has a failed_at,
    # so there is no untimed tail to page through.
    where: list[tuple[str, tuple[Any, ...]]] = []
    if execution is not None:
        where.append(("l.execution_id = %s", (resolve_execution_id(conn, execution),)))
    if since is not None:
        where.append(("l.failed_at >= %s", (since,)))
    return _page(
        conn,
        _LINEAGE,
        kind="lineage.failures",
        where=where,
        ts="failed_at",
        direction="desc",
        limit=limit,
        cursor=cursor,
        with_untimed=False,
    )


# Both walks carry the ids they passed (a path array) and never step onto one
# again: parent links of a healthy projection form a forest, but data written
# by an older release, or planted by hand, may hold a cycle, and a walk around
# it would repeat the same rows up to its bound (1,000 nodes of 2 ids). A path
# is as long as the chain is deep (tens of ids), so the check costs little.
_ANCESTORS = sql.SQL(
    """
    WITH RECURSIVE up AS (
        SELECT l.id, l.parent_id, 0 AS depth, ARRAY[l.id] AS path
        FROM lineage l WHERE l.id = %(id)s
        UNION ALL
        SELECT l.id, l.parent_id, up.depth + 1, up.path || l.id
        FROM up JOIN lineage l ON l.id = up.parent_id
        WHERE up.depth < %(max_depth)s AND l.id <> ALL(up.path)
    )
    SELECT {cols} FROM up JOIN lineage l ON l.id = up.id
    ORDER BY up.depth DESC
    """
).format(cols=_LINEAGE_COLUMNS)

# The outer LIMIT stops the recursion itself: PostgreSQL evaluates a recursive
# CTE only as far as its reader pulls rows, so a huge fan-out is never walked.
# Each row has one parent, so a row is reached twice only around a cycle,
# which the path (seeded with the row itself) stops.
_DESCENDANTS = sql.SQL(
    """
    WITH RECURSIVE down AS (
        SELECT {cols}, ARRAY[%(id)s::uuid, l.id] AS path
        FROM lineage l WHERE l.parent_id = %(id)s AND l.id <> %(id)s
        UNION ALL
        SELECT {cols}, down.path || l.id
        FROM down JOIN lineage l ON l.parent_id = down.id
        WHERE l.id <> ALL(down.path)
    )
    SELECT {out} FROM down LIMIT %(limit)s
    """
).format(cols=_LINEAGE_COLUMNS, out=sql.SQL(", ".join(_LINEAGE_NAMES)))


def chain(conn: Conn, ref: str | UUID, *, max_nodes: int = DEFAULT_MAX_NODES) -> ChainResult:
    """A row's ancestors up to the root, the row, and its descendants, at most ``max_nodes``.

    Each row at most once, whatever the parent links hold: around a cycle
    (corrupt data) the ancestors stop at the first row seen again, and the
    rows of the cycle, being descendants too, are not repeated below.
    """
    if not 1 <= max_nodes <= MAX_NODES:
        raise UsageError(f"max_nodes must be 1..{MAX_NODES}, not {max_nodes}")
    ident = resolve_lineage_id(conn, ref)
    ancestors = [
        _lineage(r)
        for r in conn.execute(
            _ANCESTORS, {"id": ident, "max_depth": min(max_nodes, _MAX_DEPTH)}, binary=True
        )
    ]
    if not ancestors:
        raise NotFound(f"no lineage row {ident}")
    # Deeper than max_nodes: keep the row and its nearest ancestors.
    truncated = len(ancestors) > max_nodes
    nodes = ancestors[-max_nodes:]
    budget = max_nodes - len(nodes)
    if budget > 0:
        seen = {n.id for n in nodes}
        # Ancestors come back as descendants only around a cycle (the row
        # itself never does): ask for as many more rows as may be left out.
        wanted = budget + 1 + len(seen) - 1
        below = [
            row
            for row in (
                _lineage(r)
                for r in conn.execute(_DESCENDANTS, {"id": ident, "limit": wanted}, binary=True)
            )
            if row.id not in seen
        ]
        truncated = truncated or len(below) > budget
        nodes += below[:budget]
    elif conn.execute(
        "SELECT 1 FROM lineage WHERE parent_id = %s AND id <> %s LIMIT 1", (ident, ident)
    ).fetchone():
        truncated = True
    return ChainResult(target=ident, nodes=tuple(nodes), truncated=truncated, max_nodes=max_nodes)


def batch(conn: Conn, ref: str | UUID) -> BatchResult:
    """Every row of one batch, oldest first, and how many of them completed or failed."""
    ident = resolve_batch_id(conn, ref)
    rows = tuple(
        _lineage(r)
        for r in conn.execute(
            sql.SQL("{} WHERE l.batch_id = %s ORDER BY l.started_at, l.id").format(_LINEAGE.select),
            (ident,),
            binary=True,
        )
    )
    if not rows:
        raise NotFound(f"no batch {ident}")
    count = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    return BatchResult(
        batch_id=ident,
        rows=rows,
        completed=count["completed"],
        failed=count["failed"],
        cancelled=count["cancelled"],
        pending=count["pending"],
    )


def stats(conn: Conn, execution: str | UUID) -> StatsResult:
    """Counts per (route, adapter) of one execution, in the order the stages first ran."""
    ident = resolve_execution_id(conn, execution)
    rows = conn.execute(
        # Stages in the order they first ran (the guide's sample reads like the
        # pipeline): each pair's first start is one step down an index on
        # (execution_id, adapter_name | route_id, started_at).
        """
        SELECT s.route_id, s.adapter_name, s.count, s.completed, s.failed, s.cancelled,
               s.pending
        FROM lineage_stats s
        LEFT JOIN LATERAL (
            SELECT l.started_at FROM lineage l
            WHERE l.execution_id = s.execution_id AND l.adapter_name = s.adapter_name
              AND l.route_id = s.route_id AND l.started_at IS NOT NULL
            ORDER BY l.started_at LIMIT 1
        ) first ON true
        WHERE s.execution_id = %s
        ORDER BY first.started_at NULLS LAST, s.route_id, s.adapter_name
        """,
        (ident,),
    ).fetchall()
    if not rows and not _execution_exists(conn, ident):
        raise NotFound(f"no execution {ident}")
    return StatsResult(
        execution_id=ident,
        rows=tuple(
            StatsRow(
                route_id=r[0],
                adapter_name=r[1],
                count=r[2],
                completed=r[3],
                failed=r[4],
                cancelled=r[5],
                pending=r[6],
            )
            for r in rows
        ),
    )


# --- executions ---------------------------------------------------------------------


def _execution_exists(conn: Conn, ident: UUID) -> bool:
    return conn.execute("SELECT 1 FROM executions WHERE id = %s", (ident,)).fetchone() is not None


def get_execution(conn: Conn, ref: str | UUID) -> ExecutionRow:
    """One execution: status, pipeline, times, counts, and what it replays."""
    ident = resolve_execution_id(conn, ref)
    row = conn.execute(
        sql.SQL("{} WHERE e.id = %s").format(_EXECUTIONS.select), (ident,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no execution {ident}")
    return _execution(row)


def list_executions(
    conn: Conn,
    *,
    status: str | None = None,
    pipeline: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[ExecutionRow]:
    """Executions, most recently started first; keyset-paginated."""
    _check_status(status, EXECUTION_STATUSES)
    where: list[tuple[str, tuple[Any, ...]]] = []
    if status is not None:
        where.append(("e.status = %s", (status,)))
    if pipeline is not None:
        where.append(("e.pipeline = %s", (pipeline,)))
    return _page(
        conn,
        _EXECUTIONS,
        kind="executions",
        where=where,
        ts="started_at",
        direction="desc",
        limit=limit,
        cursor=cursor,
    )


def pending_rows(
    conn: Conn, execution: UUID, *, after: tuple[datetime, UUID] | None = None, limit: int = 10_000
) -> list[tuple[datetime, UUID, UUID]]:
    """(started_at, id, root id) of the execution's pending rows, in start order
    after ``after``: the open invocations ``execution abandon`` closes."""
    where = "execution_id = %s AND status = 'pending' AND started_at IS NOT NULL"
    params: tuple[Any, ...] = (execution,)
    if after is not None:
        where += " AND (started_at, id) > (%s, %s)"
        params += after
    rows = conn.execute(
        f"SELECT started_at, id, COALESCE(root_id, id) FROM lineage WHERE {where}"
        " ORDER BY started_at, id LIMIT %s",
        (*params, limit),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def last_activity(conn: Conn, execution: UUID) -> datetime | None:
    """When the execution last recorded anything: its latest start, end or finish."""
    row = conn.execute(
        "SELECT greatest("
        " (SELECT max(started_at) FROM lineage WHERE execution_id = %s),"
        " (SELECT max(completed_at) FROM lineage WHERE execution_id = %s),"
        " (SELECT greatest(started_at, finished_at) FROM executions WHERE id = %s))",
        (execution, execution, execution),
    ).fetchone()
    return None if row is None else row[0]


def ping(conn: Conn) -> None:
    """Raise unless the projection's tables answer (the API's readiness check)."""
    conn.execute("SELECT 1 FROM lineage LIMIT 0")
    conn.execute("SELECT 1 FROM executions LIMIT 0")
