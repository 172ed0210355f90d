"""The projection's SQL: find the stored rows, store the new ones, add up the counts.

A batch is written in a handful of statements whatever its size (the merge
and the propagation happen in Python, see ``_fold``):

1. ``LOOKUP``: the stored state of the batch's rows, by primary key, in one
   statement, and once per propagation level for the parents the batch does
   not name (parents that completed in an earlier batch and wait for their
   children: thousands per 50k-event batch on a realistic stream).
2. ``COPY_INSERT``: the rows the batch creates, by binary COPY straight into
   ``lineage``.
3. ``COPY_REWRITE`` + ``REWRITE``: the stored rows the batch changes, staged by
   binary COPY and rewritten in place, each found by its physical address.
   A row keeps its stored wide fields (metadata, error, ...) unless the
   batch's event for them won.
4. ``DELETE``: placeholders no child names any more.
5. ``WRITE_COUNTS``: ``lineage_stats`` and ``executions`` take the signed
   differences of the batch's rows, and the batch's execution events.

One lineage row must not be written by two transactions at once (each
computes new rows from what it read): the consumer serialises per partition,
and a chain's rows share one (the Kafka key is the root id). A rewrite that
finds its row gone or moved (a writer breaking that contract) fails the batch
as a serialization failure, to be retried. ``lineage_stats`` and
``executions`` are shared by partitions: they are only added to
(``x = x + delta``), in key order, so concurrent batches neither lose updates
nor deadlock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format

from ._fold import FOLDED_COLUMNS, STORED_COLUMNS
from ._planner import EXECUTION_STAGE

STAGE_REWRITE = "factflow_stage_rewrite"
STAGE_EXECUTIONS = "factflow_stage_executions"

# How each staged column travels in the binary COPY: binary COPY carries no
# type oids, the server reads each field in the format of its column's type, so
# the planner stages values already in that format and psycopg writes them with
# its fast C dumpers for bytes, integers and text (see _planner.LINEAGE_STAGE).
WIRE_TYPE = {"uuid": "bytea", "timestamptz": "int8", "jsonb": "text", "tid": "bytea"}


def wire_types(stage: tuple[tuple[str, str], ...]) -> list[str]:
    """The types psycopg writes the staged columns as, in COPY order."""
    return [WIRE_TYPE.get(kind, kind) for _, kind in stage]


def _staged(stage: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in stage)


class UuidArray(bytes):
    """A uuid[] value, already in PostgreSQL's binary array format (see ``uuid_array``)."""


class UuidArrayDumper(Dumper):
    """Sends a ``UuidArray`` as it is: no Python object per element."""

    format = Format.BINARY
    oid = 2951  # uuid[]

    def dump(self, obj: UuidArray) -> Buffer:
        return obj


_ARRAY_HEADER = struct.Struct("!iiIii")
_UUID_OID = 2950
_ELEMENT_LENGTH = struct.pack("!i", 16)


def uuid_array(ids: list[bytes]) -> UuidArray:
    """``ids`` (16 raw bytes each) as a one-dimensional uuid[] without NULLs."""
    if not ids:
        return UuidArray(_ARRAY_HEADER.pack(0, 0, _UUID_OID, 0, 0)[:12])
    header = _ARRAY_HEADER.pack(1, 0, _UUID_OID, len(ids), 1)
    return UuidArray(header + _ELEMENT_LENGTH + _ELEMENT_LENGTH.join(ids))


# A row's stored state, as _fold.Row reads it: uuids as their 16 bytes, times as
# microseconds since 2000-01-01 (what the planner stages), its physical address.
_MICROS = "(extract(epoch FROM x.{0}) * 1000000)::int8 - 946684800000000"
_STORED_EXPR = {
    "id": "uuid_send(x.id)",
    "tid": "tidsend(x.ctid)",
    "start_event_id": "uuid_send(x.start_event_id)",
    "started_at": _MICROS.format("started_at"),
    "execution_id": "uuid_send(x.execution_id)",
    "parent_id": "uuid_send(x.parent_id)",
    "terminal_event_id": "uuid_send(x.terminal_event_id)",
    "completed_at": _MICROS.format("completed_at"),
    "contrib_parent": "uuid_send(x.contrib_parent)",
}
LOOKUP = (
    "SELECT "
    + ", ".join(_STORED_EXPR.get(c, f"x.{c}") for c in STORED_COLUMNS)
    + " FROM {lineage} x WHERE x.id = ANY(%s)"
)

# New rows, in the order _projection builds them (the planner's staged order,
# with the counters and the contribution to the parent at the end).
INSERT: tuple[tuple[str, str], ...] = (
    ("id", "uuid"),
    ("start_event_id", "uuid"),
    ("execution_id", "uuid"),
    ("root_id", "uuid"),
    ("parent_id", "uuid"),
    ("route_id", "text"),
    ("adapter_name", "text"),
    ("input_hash", "text"),
    ("batch_id", "uuid"),
    ("input_key", "text"),
    ("metadata", "jsonb"),
    ("started_at", "timestamptz"),
    ("terminal_event_id", "uuid"),
    ("status", "text"),
    ("output_hash", "text"),
    ("error", "jsonb"),
    ("cancel_reason", "text"),
    ("completed_at", "timestamptz"),
    ("children_expected", "int4"),
    ("children_registered", "int4"),
    ("children_settled", "int4"),
    ("descendants_failed", "int4"),
    ("contrib_parent", "uuid"),
    ("contrib_settled", "bool"),
    ("contrib_failed", "int4"),
)
COPY_INSERT = "COPY {lineage} (" + ", ".join(n for n, _ in INSERT) + ") FROM STDIN (FORMAT BINARY)"

# Fields a stored row keeps unless the batch's start (terminal) event for it won.
START_WIDE = ("root_id", "input_hash", "batch_id", "input_key", "metadata")
TERMINAL_WIDE = ("output_hash", "error", "cancel_reason")
_TYPES = dict(INSERT)
# Rewritten rows: where, which events won, then every column's new value.
REWRITE_STAGE: tuple[tuple[str, str], ...] = (
    ("tid", "tid"),
    ("start_won", "bool"),
    ("terminal_won", "bool"),
    *(
        (name, _TYPES[name])
        for name in (
            "start_event_id",
            "started_at",
            "execution_id",
            "parent_id",
            "route_id",
            "adapter_name",
            *START_WIDE,
            "terminal_event_id",
            "status",
            "completed_at",
            "children_expected",
            *TERMINAL_WIDE,
            *FOLDED_COLUMNS,
        )
    ),
)
COPY_REWRITE = (
    f"COPY pg_temp.{STAGE_REWRITE} ({', '.join(n for n, _ in REWRITE_STAGE)})"
    " FROM STDIN (FORMAT BINARY)"
)


def _assignment(name: str) -> str:
    if name in START_WIDE:
        return f"{name} = CASE WHEN s.start_won THEN s.{name} ELSE t.{name} END"
    if name in TERMINAL_WIDE:
        return f"{name} = CASE WHEN s.terminal_won THEN s.{name} ELSE t.{name} END"
    return f"{name} = s.{name}"


REWRITE = (
    "UPDATE {lineage} t SET "
    + ", ".join(_assignment(n) for n, _ in REWRITE_STAGE[3:])
    + f" FROM pg_temp.{STAGE_REWRITE} s WHERE t.ctid = s.tid"
)

DELETE = "DELETE FROM {lineage} WHERE id = ANY(%s)"

# The rewrite stage of a 50,000-event batch is megabytes; with the default 8 MB
# of temp_buffers it could go through the kernel. The setting can only change
# before the session's first temporary table: so on the first batch.
TEMP_BUFFERS = "64MB"

SETUP = f"""
DO $$
BEGIN
    IF to_regclass('pg_temp.{STAGE_REWRITE}') IS NULL THEN
        BEGIN
            PERFORM set_config('temp_buffers', '{TEMP_BUFFERS}', false);
        EXCEPTION WHEN invalid_parameter_value THEN
            NULL;  -- the session used temporary tables before: keep its setting
        END;
    END IF;
END
$$;
CREATE TEMP TABLE IF NOT EXISTS {STAGE_REWRITE} ({_staged(REWRITE_STAGE)});
CREATE TEMP TABLE IF NOT EXISTS {STAGE_EXECUTIONS} ({_staged(EXECUTION_STAGE)});
TRUNCATE {STAGE_REWRITE}, {STAGE_EXECUTIONS};
"""

COPY_EXECUTIONS = (
    f"COPY pg_temp.{STAGE_EXECUTIONS} ({', '.join(n for n, _ in EXECUTION_STAGE)})"
    " FROM STDIN (FORMAT BINARY)"
)

# The temporary tables are never analysed, so the planner's idea of their size
# is a guess; left to itself it may hash all of lineage to join a few hundred
# rows. Hash and merge joins are off while a batch is written: every access to
# lineage is then a primary-key probe or a fetch by physical address. JIT is
# off too: the cost a disabled join adds to an estimate would have every
# statement compiled (a second of LLVM for a few milliseconds of work).
# work_mem holds a batch's intermediate results in memory. All local to the
# caller's transaction, and put back at the end of the batch.
SETTINGS = {"jit": "off", "enable_hashjoin": "off", "enable_mergejoin": "off", "work_mem": "64MB"}
SETTINGS_OFF = (
    "SELECT "
    + ", ".join(f"current_setting('{name}')" for name in SETTINGS)
    + ", "
    + ", ".join(f"set_config('{name}', '{value}', true)" for name, value in SETTINGS.items())
)
SETTINGS_RESTORE = "SELECT " + ", ".join(f"set_config('{name}', %s, true)" for name in SETTINGS)


def _rank(status: str) -> str:
    # Precedence of conflicting finish events of one execution (see _planner).
    return (
        f"(CASE {status} WHEN 'failed' THEN 3 WHEN 'cancelled' THEN 2"
        f" WHEN 'completed' THEN 1 ELSE 0 END)"
    )


_COUNTS = ("completed", "failed", "cancelled", "pending")
STATS_COLUMNS = ("count", *_COUNTS)
EXECUTION_COUNTS = ("total", *_COUNTS, "unsettled")
_X_START = (
    "EXCLUDED.start_event_id IS NOT NULL AND (e.start_event_id IS NULL"
    " OR (EXCLUDED.started_at, EXCLUDED.start_event_id) < (e.started_at, e.start_event_id))"
)
_X_FINISH = (
    "EXCLUDED.finish_event_id IS NOT NULL AND (e.finish_event_id IS NULL"
    f" OR ({_rank('EXCLUDED.status')}, EXCLUDED.finished_at, EXCLUDED.finish_event_id)"
    f" > ({_rank('e.status')}, e.finished_at, e.finish_event_id))"
)
_X_START_FIELDS = (
    "start_event_id",
    "pipeline",
    "metadata",
    "replay_of",
    "replay_from_stage",
    "started_at",
)
_X_FINISH_FIELDS = ("finish_event_id", "status", "error", "finished_at")
# An execution's fields follow its winning events; its counters only add up.
_X_SET = ",\n        ".join(
    [
        *(f"{c} = CASE WHEN {_X_START} THEN EXCLUDED.{c} ELSE e.{c} END" for c in _X_START_FIELDS),
        *(
            f"{c} = CASE WHEN {_X_FINISH} THEN EXCLUDED.{c} ELSE e.{c} END"
            for c in _X_FINISH_FIELDS
        ),
        *(f"{c} = e.{c} + EXCLUDED.{c}" for c in EXECUTION_COUNTS),
    ]
)

# The batch's differences of the counts (from _fold, as arrays: one element per
# (execution, route, adapter), one per execution) and its execution events.
# Rows are locked in key order, the same in every writer.
WRITE_COUNTS = f"""
WITH su AS (
    INSERT INTO {{stats}} AS st
        (execution_id, route_id, adapter_name, {", ".join(STATS_COLUMNS)})
    SELECT * FROM unnest(
        %(stats_execution)s::uuid[], %(stats_route)s::text[], %(stats_adapter)s::text[],
        {", ".join(f"%(stats_{c})s::int8[]" for c in STATS_COLUMNS)}
    ) ORDER BY 1, 2, 3
    ON CONFLICT (execution_id, route_id, adapter_name) DO UPDATE SET
        {", ".join(f"{c} = st.{c} + EXCLUDED.{c}" for c in STATS_COLUMNS)}
    RETURNING execution_id, route_id, adapter_name, count
), xd AS (
    SELECT * FROM unnest(
        %(x_execution)s::uuid[], {", ".join(f"%(x_{c})s::int8[]" for c in EXECUTION_COUNTS)}
    ) AS xd(execution_id, {", ".join(EXECUTION_COUNTS)})
), x AS (
    SELECT coalesce(s.id, xd.execution_id) AS id,
           {", ".join(f"s.{c}" for c in (*_X_START_FIELDS, "finish_event_id", "error"))},
           coalesce(s.status, 'running') AS status, s.finished_at,
           {", ".join(f"coalesce(xd.{c}, 0) AS {c}" for c in EXECUTION_COUNTS)}
    FROM pg_temp.{STAGE_EXECUTIONS} s
    FULL JOIN xd ON xd.execution_id = s.id
), xu AS (
    INSERT INTO {{executions}} AS e
        (id, {", ".join((*_X_START_FIELDS, *_X_FINISH_FIELDS, *EXECUTION_COUNTS))})
    SELECT id, {", ".join((*_X_START_FIELDS, *_X_FINISH_FIELDS, *EXECUTION_COUNTS))}
    FROM x ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        {_X_SET}
    RETURNING id, start_event_id, finish_event_id, total
)
SELECT 'stats', execution_id, route_id, adapter_name FROM su WHERE count = 0
UNION ALL
SELECT 'execution', id, NULL, NULL FROM xu
WHERE start_event_id IS NULL AND finish_event_id IS NULL AND total = 0
"""

# Rows left empty by a row that moved (a start event that won later named
# another execution, route or adapter): the tables equal a fresh projection.
DELETE_STATS = """
DELETE FROM {stats} st
USING unnest(%s::uuid[], %s::text[], %s::text[]) AS z(execution_id, route_id, adapter_name)
WHERE st.execution_id = z.execution_id AND st.route_id = z.route_id
  AND st.adapter_name = z.adapter_name AND st.count = 0
"""
DELETE_EXECUTIONS = """
DELETE FROM {executions}
WHERE id = ANY(%s::uuid[]) AND start_event_id IS NULL AND finish_event_id IS NULL AND total = 0
"""


@dataclass(frozen=True)
class Statements:
    """The statements above with the projection's schema filled in."""

    lookup: bytes
    copy_insert: bytes
    rewrite: bytes
    delete: bytes
    write_counts: bytes
    delete_stats: bytes
    delete_executions: bytes

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        names = {
            "lineage": sql.Identifier(schema, "lineage"),
            "executions": sql.Identifier(schema, "executions"),
            "stats": sql.Identifier(schema, "lineage_stats"),
        }

        def render(text: str) -> bytes:
            return sql.SQL(text).format(**names).as_bytes(None)

        return cls(
            lookup=render(LOOKUP),
            copy_insert=render(COPY_INSERT),
            rewrite=render(REWRITE),
            delete=render(DELETE),
            write_counts=render(WRITE_COUNTS),
            delete_stats=render(DELETE_STATS),
            delete_executions=render(DELETE_EXECUTIONS),
        )
