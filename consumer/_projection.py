"""The projection writer: one consumed batch of events into the lineage tables.

``Projection.apply`` plans the batch in memory (``_planner``: one staged row
per id), copies the staged rows into temporary tables with binary COPY, and
runs the set-based statements of ``_sql``: the merge into a working set, one
propagation statement per level of the chains whose counters change, and one
write of every changed row with the stats and execution counts. No statement
is issued per row: the round trips depend on the depth of the chains, not on
the size of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.string import BytesBinaryDumper

from factflow_lineage.errors import LineageError

from . import _sql
from ._planner import EXECUTION_STAGE, LINEAGE_STAGE, Plan, RejectedEvent, plan

# Far beyond any real pipeline (tens of stages): only a cycle in the parent
# links (corrupt producer data) could make propagation climb this high.
MAX_LEVELS = 1_000


class ParentCycleError(LineageError, ValueError):
    """The batch closes a cycle of parent links, which no counter could settle.

    A ValueError too: the consumer treats it like an invalid value, narrowing
    the batch down to the event that closes the cycle and dead-lettering it.
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
            cur.execute(_sql.SETUP)
            saved = _one(cur.execute(_sql.SETTINGS_OFF))[: len(_sql.SETTINGS)]
            _copy(cur, _sql.COPY_LINEAGE, LINEAGE_STAGE, batch.lineage)
            _copy(cur, _sql.COPY_EXECUTIONS, EXECUTION_STAGE, batch.executions)

            _, pending = _one(cur.execute(st.merge))
            levels = 0
            while pending > 0:
                if levels >= MAX_LEVELS:
                    raise ParentCycleError(
                        f"pending-children propagation did not finish after {MAX_LEVELS} "
                        "levels: the parent links of the batch's rows form a cycle"
                    )
                _, pending = _one(cur.execute(st.propagate[levels % 2]))
                levels += 1

            written = cur.execute(st.write_rows).rowcount
            empty_stats: list[tuple[UUID, str, str]] = []
            empty_executions: list[UUID] = []
            for kind, ident, route, adapter in cur.execute(st.write).fetchall():
                if kind == "stats":
                    empty_stats.append((ident, route, adapter))
                else:
                    empty_executions.append(ident)
            if empty_stats:
                cur.execute(
                    st.delete_stats, [list(column) for column in zip(*empty_stats, strict=True)]
                )
            cur.execute(_sql.SETTINGS_RESTORE, saved)
            if empty_executions:
                cur.execute(st.delete_executions, (empty_executions,))
        return ApplyStats(
            events=batch.events,
            lineage_rows=len(batch.lineage),
            executions=len(batch.executions),
            rows_touched=written,
            levels=levels,
            ignored=batch.ignored,
            rejected=batch.rejected,
        )


def _one(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None  # the statements end in a one-row SELECT
    return tuple(row)


def _copy(
    cur: psycopg.Cursor[Any],
    statement: str,
    columns: tuple[tuple[str, str], ...],
    rows: list[tuple[Any, ...]],
) -> None:
    if not rows:
        return
    # By type oid, bytea would get the dumper of psycopg's DB-API Binary
    # wrapper (pure Python); raw bytes are what the planner stages.
    cur.adapters.register_dumper(bytes, BytesBinaryDumper)
    with cur.copy(statement) as copy:
        copy.set_types(_sql.wire_types(columns))
        for row in rows:
            copy.write_row(row)
