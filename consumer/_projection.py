"""The projection writer: one consumed batch of events into the lineage tables.

``Projection.apply`` plans the batch in memory (``_planner``: one staged row
per id), reads the stored state of those rows in one statement, folds the
batch into them in memory (``_fold``: winning events, pending-children
propagation up the chains, the counts' differences), and writes the result
with the set-based statements of ``_sql``: new rows by binary COPY straight
into ``lineage``, changed rows staged by COPY and rewritten in place, then the
stats and execution counts. No statement is issued per row: the round trips
depend on how far up the chains the batch's changes climb beyond its own rows
(a parent fetch per level), not on the size of the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.errors import SerializationFailure
from psycopg.pq import TransactionStatus
from psycopg.types.string import BytesBinaryDumper

from factflow_lineage.errors import LineageError

from . import _cycles, _sql
from ._fold import Fold, ParentCycleError, Row, Stored, fold
from ._planner import EXECUTION_STAGE, Plan, RejectedEvent, plan

__all__ = ["ApplyStats", "ParentCycleError", "Projection"]

# Far beyond any real pipeline (tens of stages): only a cycle in the parent
# links (corrupt producer data) could make propagation climb this high.
MAX_LEVELS = 1_000

# The parent links of rows, for _cycles' walks only (never on the common path):
# id, parent_id, started_at as the fold reads them, and the parent a note of
# _cycles names (an object: a producer's metadata holds only scalars).
_LINKS = """
SELECT uuid_send(x.id), uuid_send(x.parent_id),
       (extract(epoch FROM x.started_at) * 1000000)::int8 - 946684800000000,
       uuid_send(CASE WHEN jsonb_typeof(x.metadata -> {note}) = 'object'
                      THEN (x.metadata -> {note} ->> 'parent_id')::uuid END)
FROM {lineage} x WHERE x.id = ANY(%s)
"""
# Notes of _cycles, written after the rows: set on a row whose link was
# broken, removed from a row whose link was restored.
_REPAIR = """
UPDATE {lineage} t SET metadata = CASE
    WHEN z.parent IS NULL THEN t.metadata - {note}
    ELSE coalesce(t.metadata, '{{}}'::jsonb) || jsonb_build_object(
        {note}, jsonb_build_object('parent_id', z.parent, 'reason', {reason}::text))
    END
FROM unnest(%s::uuid[], %s::uuid[]) AS z(id, parent)
WHERE t.id = z.id
"""


@dataclass(frozen=True, kw_only=True)
class ApplyStats:
    """What one ``Projection.apply`` did.

    ``events``: events given; ``lineage_rows`` / ``executions``: distinct ids
    they name after coalescing; ``rows_touched``: lineage rows written (each
    once: the rows the events changed, and the ancestors whose counters
    changed, placeholders included); ``levels``: propagation steps up the
    chains; ``ignored``: events of a type this release does not know;
    ``rejected``: events that cannot be stored, left out (the caller
    dead-letters them), with their index in ``events`` and a reason.
    """

    events: int
    lineage_rows: int
    executions: int
    rows_touched: int
    levels: int
    ignored: int
    rejected: tuple[RejectedEvent, ...]


class Projection:
    """Writes lineage events into the projection tables of one PostgreSQL schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._statements = _sql.Statements.for_schema(schema)
        names = {
            "lineage": sql.Identifier(schema, "lineage"),
            "note": sql.Literal(_cycles.NOTE),
            "reason": sql.Literal(_cycles.REASON),
        }
        self._links = sql.SQL(_LINKS).format(**names).as_bytes(None)
        self._repair = sql.SQL(_REPAIR).format(**names).as_bytes(None)

    def apply(
        self, conn: psycopg.Connection[Any], events: Sequence[Mapping[str, Any]]
    ) -> ApplyStats:
        """Bring the tables to the state that includes ``events``.

        Runs inside the caller's transaction (never commits or rolls back).
        ``events`` are decoded raw event dicts in any order, with any
        duplicates: the resulting tables depend only on the set of events
        applied so far. Events that cannot be stored are skipped and listed
        in ``ApplyStats.rejected``. psycopg errors propagate unchanged, for
        the caller to roll back and retry or reconnect.

        Callers must not apply events of the same lineage rows in two
        transactions at once (the consumer serialises per partition).
        """
        return self.apply_plan(conn, plan(events))

    @staticmethod
    def plan(events: Sequence[Mapping[str, Any]]) -> Plan:
        """The CPU half of ``apply``: check and coalesce ``events``, no database.

        Pure and thread-safe, so a consumer can plan the next batch while the
        database writes this one (psycopg releases the GIL while it waits).
        """
        return plan(events)

    def apply_plan(self, conn: psycopg.Connection[Any], batch: Plan) -> ApplyStats:
        """The database half of ``apply``: write a planned batch (same contract)."""
        if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
            # Each statement would commit on its own: a crash could leave half a batch.
            raise LineageError("Projection.apply must run inside the caller's transaction")
        if not batch.lineage and not batch.executions:
            return ApplyStats(
                events=batch.events,
                lineage_rows=0,
                executions=0,
                rows_touched=0,
                levels=0,
                ignored=batch.ignored,
                rejected=batch.rejected,
            )
        st = self._statements
        with conn.cursor() as cur:
            # By type oid, bytea would get the dumper of psycopg's DB-API Binary
            # wrapper (pure Python); raw bytes are what the planner stages.
            cur.adapters.register_dumper(bytes, BytesBinaryDumper)
            cur.adapters.register_dumper(_sql.UuidArray, _sql.UuidArrayDumper)
            cur.execute(_sql.SETUP)
            saved = _one(cur.execute(_sql.SETTINGS_OFF))[: len(_sql.SETTINGS)]

            def lookup(ids: list[bytes]) -> list[Stored]:
                return cur.execute(st.lookup, (_sql.uuid_array(ids),), binary=True).fetchall()

            def links(ids: list[bytes]) -> list[_cycles.Link]:
                return cur.execute(self._links, (_sql.uuid_array(ids),), binary=True).fetchall()

            ids = [r[0] for r in batch.lineage]
            stored = {r[0]: r for r in lookup(ids)} if ids else {}
            folded = fold(batch.lineage, stored, lookup, max_levels=MAX_LEVELS, links=links)
            self._write_rows(cur, folded)
            if folded.repairs:
                notes = sorted(folded.repairs.items())
                cur.execute(
                    self._repair,
                    (
                        [UUID(bytes=lid) for lid, _ in notes],
                        [None if p is None else UUID(bytes=p) for _, p in notes],
                    ),
                )
            if batch.executions:
                _copy(cur, _sql.COPY_EXECUTIONS, EXECUTION_STAGE, batch.executions)
            if folded.stats or folded.executions or batch.executions:
                self._write_counts(cur, folded)
            cur.execute(_sql.SETTINGS_RESTORE, saved)
        return ApplyStats(
            events=batch.events,
            lineage_rows=len(batch.lineage),
            executions=len(batch.executions),
            rows_touched=len(folded.inserts) + len(folded.updates) + len(folded.deletes),
            levels=folded.levels,
            ignored=batch.ignored,
            rejected=batch.rejected,
        )

    def _write_rows(self, cur: psycopg.Cursor[Any], folded: Fold) -> None:
        st = self._statements
        if folded.inserts:
            # Generators: each row is built while PostgreSQL takes in the previous ones.
            _copy(cur, st.copy_insert, _sql.INSERT, map(_inserted, folded.inserts))
        if folded.updates:
            _copy(cur, _sql.COPY_REWRITE, _sql.REWRITE_STAGE, map(_rewritten, folded.updates))
            _expect(cur.execute(st.rewrite).rowcount, len(folded.updates), "rewritten")
        if folded.deletes:
            ids = _sql.uuid_array([r.id for r in folded.deletes])
            _expect(cur.execute(st.delete, (ids,)).rowcount, len(folded.deletes), "deleted")

    def _write_counts(self, cur: psycopg.Cursor[Any], folded: Fold) -> None:
        st = self._statements
        stats = [(key, v) for key, v in folded.stats.items() if any(v)]
        executions = [(key, v) for key, v in folded.executions.items() if any(v)]
        params: dict[str, Any] = {
            "stats_execution": _sql.uuid_array([key[0] for key, _ in stats]),
            "stats_route": [key[1] for key, _ in stats],
            "stats_adapter": [key[2] for key, _ in stats],
            "x_execution": _sql.uuid_array([key for key, _ in executions]),
        }
        for i, name in enumerate(_sql.STATS_COLUMNS):
            params[f"stats_{name}"] = [v[i] for _, v in stats]
        for i, name in enumerate(_sql.EXECUTION_COUNTS):
            params[f"x_{name}"] = [v[i] for _, v in executions]
        empty_stats: list[tuple[Any, str, str]] = []
        empty_executions: list[Any] = []
        for kind, ident, route, adapter in cur.execute(st.write_counts, params).fetchall():
            if kind == "stats":
                empty_stats.append((ident, route, adapter))
            else:
                empty_executions.append(ident)
        if empty_stats:
            cur.execute(
                st.delete_stats, [list(column) for column in zip(*empty_stats, strict=True)]
            )
        if empty_executions:
            cur.execute(st.delete_executions, (empty_executions,))


def _expect(done: int, wanted: int, what: str) -> None:
    # Fewer rows than read a moment ago in this transaction: another transaction
    # changed them (events of one row projected from two partitions at once).
    # Retrying the batch reads them again.
    if done != wanted:
        raise SerializationFailure(
            f"{wanted - done} of {wanted} lineage rows to be {what} were changed concurrently"
        )


# A placeholder's columns between its id and its counters (see _sql.INSERT).
_PLACEHOLDER = (None,) * 12 + ("pending",) + (None,) * 5
_NO_START_WIDE = (None,) * len(_sql.START_WIDE)
_NO_TERMINAL_WIDE = (None,) * len(_sql.TERMINAL_WIDE)


def _inserted(row: Row) -> tuple[Any, ...]:
    """A new row in _sql.INSERT order, from its staged row (the planner's order)."""
    tail = row.folded()
    s = row.staged
    if s is None:
        return (row.id, *_PLACEHOLDER, *tail)
    # Staged: id, start fields, terminal event, status, rank, its execution, ...:
    # the execution is the row's own (a placeholder's comes from its terminal
    # event), the rank and the terminal event's execution are not columns.
    return (*s[:2], row.execution_id, *s[3:13], row.status, *s[16:], *tail)


def _rewritten(row: Row) -> tuple[Any, ...]:
    """A changed stored row in _sql.REWRITE_STAGE order."""
    s: tuple[Any, ...] = row.staged or ()  # none when only its counters changed
    start_wide = (s[3], s[7], s[8], s[9], s[10]) if row.start_won else _NO_START_WIDE
    terminal_wide = (s[16], s[17], s[18]) if row.terminal_won else _NO_TERMINAL_WIDE
    return (
        row.tid,
        row.start_won,
        row.terminal_won,
        row.start_event_id,
        row.started_at,
        row.execution_id,
        row.parent_id,
        row.route_id,
        row.adapter_name,
        *start_wide,
        row.terminal_event_id,
        row.status,
        row.completed_at,
        row.children_expected,
        *terminal_wide,
        *row.folded(),
    )


def _one(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None  # the statements end in a one-row SELECT
    return tuple(row)


def _copy(
    cur: psycopg.Cursor[Any],
    statement: str | bytes,
    columns: tuple[tuple[str, str], ...],
    rows: Iterable[tuple[Any, ...]],
) -> None:
    with cur.copy(statement) as copy:
        copy.set_types(_sql.wire_types(columns))
        for row in rows:
            copy.write_row(row)
