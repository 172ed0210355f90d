"""The projection's set-based SQL: staging, merge, propagation, write, counts.

A batch is written in a handful of statements whatever its size:

1. ``SETUP``: temporary tables (created once per session, emptied per batch);
   the planner's rows arrive in the staging tables by binary COPY.
2. ``MERGE``: each staged row is merged with its stored version (the winning
   start and terminal events decide the fields) into the *working set*, a
   temporary table holding the new state of every row the batch changes
   beside its old state. What each row adds to its parent's counters, minus
   what it added before, goes to a delta table.
3. ``PROPAGATE``, once per level while deltas are left: the parents named by
   the deltas take them, in the working set (a parent not in it yet is read
   from lineage with its delta applied; one that does not exist becomes a
   placeholder); a parent whose settled state or failed count changes passes
   its own delta one level up.
4. ``WRITE``: every changed row is written to ``lineage`` exactly once (a
   plain INSERT for new rows, an UPDATE by physical address for the others);
   ``lineage_stats`` and ``executions`` take the difference between each row's
   old and new state, and the batch's execution events.

Propagating in the working set rather than in ``lineage`` keeps each row at
one new version per batch (instead of one per level), so updates stay HOT
and the indexes are touched only when an indexed column really changes.

Statements 2-4 compute new row values from what they read, so one lineage row
must not be written by two transactions at once: the consumer serialises per
partition, and a chain's rows share one (the Kafka key is the root id).
``lineage_stats`` and ``executions`` are shared by partitions: they are only
added to (``x = x + delta``), in key order, so concurrent batches neither lose
updates nor deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from ._planner import EXECUTION_STAGE, LINEAGE_STAGE

STAGE_LINEAGE = "factflow_stage_lineage"
STAGE_EXECUTIONS = "factflow_stage_executions"
WORK = "factflow_work"
DELTAS = ("factflow_delta_0", "factflow_delta_1")

# How each staged column travels in the binary COPY: binary COPY carries no
# type oids, the server reads each field in the format of its column's type, so
# the planner stages values already in that format and psycopg writes them with
# its fast C dumpers for bytes, integers and text (see _planner.LINEAGE_STAGE).
WIRE_TYPE = {"uuid": "bytea", "timestamptz": "int8", "jsonb": "text"}


def wire_types(stage: tuple[tuple[str, str], ...]) -> list[str]:
    """The types psycopg writes the staged columns as, in COPY order."""
    return [WIRE_TYPE.get(kind, kind) for _, kind in stage]


def _staged(stage: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{name} {kind}" for name, kind in stage)


# The lineage table's own columns (its generated ones are computed by it).
ROW_COLUMNS = (
    ("execution_id", "uuid"),
    ("root_id", "uuid"),
    ("parent_id", "uuid"),
    ("route_id", "text"),
    ("adapter_name", "text"),
    ("status", "text NOT NULL DEFAULT 'pending'"),
    ("input_hash", "text"),
    ("output_hash", "text"),
    ("error", "jsonb"),
    ("cancel_reason", "text"),
    ("started_at", "timestamptz"),
    ("completed_at", "timestamptz"),
    ("batch_id", "uuid"),
    ("input_key", "text"),
    ("metadata", "jsonb"),
    ("children_expected", "integer"),
    ("children_registered", "integer NOT NULL DEFAULT 0"),
    ("children_settled", "integer NOT NULL DEFAULT 0"),
    ("descendants_failed", "integer NOT NULL DEFAULT 0"),
    ("start_event_id", "uuid"),
    ("terminal_event_id", "uuid"),
    ("contrib_parent", "uuid"),
    ("contrib_settled", "boolean NOT NULL DEFAULT false"),
    ("contrib_failed", "integer NOT NULL DEFAULT 0"),
)
_COLS = tuple(name for name, _ in ROW_COLUMNS)
# The old state of a row: what the stats and execution counts held for it.
_OLD = (
    ("tid", "tid"),  # its physical address in lineage; NULL for a new row
    ("o_known", "boolean NOT NULL DEFAULT false"),
    ("o_execution_id", "uuid"),
    ("o_route_id", "text"),
    ("o_adapter_name", "text"),
    ("o_status", "text NOT NULL DEFAULT 'pending'"),
    ("o_settled", "boolean NOT NULL DEFAULT false"),
    # What it added to its parent's counters before the batch (for the merge).
    ("o_contrib_parent", "uuid"),
    ("o_contrib_settled", "boolean NOT NULL DEFAULT false"),
    ("o_contrib_failed", "integer NOT NULL DEFAULT 0"),
)

# The working set of a 20,000-event batch is tens of megabytes; with the
# default 8 MB of temp_buffers it would go through the kernel. The setting can
# only change before the session's first temporary table: so on the first batch.
TEMP_BUFFERS = "256MB"

SETUP = f"""
DO $$
BEGIN
    IF to_regclass('pg_temp.{WORK}') IS NULL THEN
        BEGIN
            PERFORM set_config('temp_buffers', '{TEMP_BUFFERS}', false);
        EXCEPTION WHEN invalid_parameter_value THEN
            NULL;  -- the session used temporary tables before: keep its setting
        END;
    END IF;
END
$$;
CREATE TEMP TABLE IF NOT EXISTS {STAGE_LINEAGE} ({_staged(LINEAGE_STAGE)});
CREATE TEMP TABLE IF NOT EXISTS {STAGE_EXECUTIONS} ({_staged(EXECUTION_STAGE)});
CREATE TEMP TABLE IF NOT EXISTS {WORK} (
    id uuid PRIMARY KEY,
    {", ".join(f"{n} {t}" for n, t in (*_OLD, *ROW_COLUMNS))}
) WITH (fillfactor = 50);
CREATE TEMP TABLE IF NOT EXISTS {DELTAS[0]} (id uuid NOT NULL, dr int, ds int, df int);
CREATE TEMP TABLE IF NOT EXISTS {DELTAS[1]} (id uuid NOT NULL, dr int, ds int, df int);
TRUNCATE {STAGE_LINEAGE}, {STAGE_EXECUTIONS}, {WORK}, {DELTAS[0]}, {DELTAS[1]};
"""

COPY_LINEAGE = (
    f"COPY pg_temp.{STAGE_LINEAGE} ({', '.join(n for n, _ in LINEAGE_STAGE)})"
    " FROM STDIN (FORMAT BINARY)"
)
COPY_EXECUTIONS = (
    f"COPY pg_temp.{STAGE_EXECUTIONS} ({', '.join(n for n, _ in EXECUTION_STAGE)})"
    " FROM STDIN (FORMAT BINARY)"
)

# The temporary tables are never analysed, so the planner's idea of their size
# is a guess; left to itself it may hash all of lineage to join a few hundred
# rows. Hash and merge joins are off while a batch is written: every access to
# lineage is then a primary-key probe or a fetch by physical address, every
# join with a temporary table a probe of its primary key. JIT is off too: the
# cost a disabled join adds to an estimate would have every statement compiled
# (a second of LLVM for a few milliseconds of work). work_mem holds a batch's
# intermediate results in memory. All local to the caller's transaction, and
# put back at the end of the batch.
SETTINGS = {"jit": "off", "enable_hashjoin": "off", "enable_mergejoin": "off", "work_mem": "64MB"}
SETTINGS_OFF = (
    "SELECT "
    + ", ".join(f"current_setting('{name}')" for name in SETTINGS)
    + ", "
    + ", ".join(f"set_config('{name}', '{value}', true)" for name, value in SETTINGS.items())
)
SETTINGS_RESTORE = "SELECT " + ", ".join(f"set_config('{name}', %s, true)" for name in SETTINGS)


def _lookup(outer: str) -> str:
    # One primary-key probe per row (OFFSET 0 keeps the subquery from being
    # flattened into a join the planner might do another way).
    return (
        f"LEFT JOIN LATERAL (SELECT x.ctid AS tid, x.* FROM {{lineage}} x"
        f" WHERE x.id = {outer}.id OFFSET 0) l ON true"
    )


def _rank(status: str) -> str:
    # Precedence of conflicting terminal events of one id (see _planner).
    return (
        f"(CASE {status} WHEN 'failed' THEN 3 WHEN 'cancelled' THEN 2"
        f" WHEN 'completed' THEN 1 ELSE 0 END)"
    )


def _settled_delta(row: str, delta: str) -> str:
    # _settled of a working-set row after the deltas {delta}dr and {delta}ds.
    return (
        f"({row}status <> 'pending' AND {row}children_settled + {delta}ds"
        f" >= greatest(coalesce({row}children_expected, 0), {row}children_registered + {delta}dr))"
    )


def _settled(row: str) -> str:
    # The definition of the generated column lineage.settled.
    return (
        f"({row}status <> 'pending' AND {row}children_settled"
        f" >= greatest(coalesce({row}children_expected, 0), {row}children_registered))"
    )


_OLD_FROM_L = """
        l.tid,
        coalesce(l.known, false) AS o_known,
        l.execution_id AS o_execution_id,
        l.route_id AS o_route_id,
        l.adapter_name AS o_adapter_name,
        coalesce(l.status, 'pending') AS o_status,
        coalesce(l.settled, false) AS o_settled"""


_COUNTERS = ("children_registered", "children_settled", "descendants_failed")
# Fields taken from the winning start event, and from the winning terminal one.
_START_FIELDS = (
    "start_event_id",
    "root_id",
    "parent_id",
    "route_id",
    "adapter_name",
    "input_hash",
    "batch_id",
    "input_key",
    "metadata",
    "started_at",
)
_TERMINAL_FIELDS = (
    "terminal_event_id",
    "output_hash",
    "error",
    "cancel_reason",
    "completed_at",
    "children_expected",
)

# The deltas of a set ``m`` of rows: what each adds to its parent now (new
# contrib_*), minus what it added before (o_contrib_*, to the parent it named then).
_DELTAS = """
    SELECT target, sum(dr), sum(ds), sum(df)
    FROM (
        SELECT o_contrib_parent AS target, -1 AS dr,
               -(o_contrib_settled::int) AS ds, -o_contrib_failed AS df
        FROM m WHERE o_contrib_parent IS NOT NULL
        UNION ALL
        SELECT contrib_parent, 1, contrib_settled::int, contrib_failed
        FROM m WHERE contrib_parent IS NOT NULL
    ) d
    GROUP BY target
    HAVING sum(dr) <> 0 OR sum(ds) <> 0 OR sum(df) <> 0"""

# A row's contribution to its parent's counters, from its own (new) columns.
_CONTRIB = """
        k.contrib_parent IS NOT NULL AND k.settled AS contrib_settled,
        CASE WHEN k.contrib_parent IS NOT NULL
             THEN (k.status = 'failed')::int + k.descendants_failed ELSE 0 END
            AS contrib_failed"""

MERGE = f"""
WITH j AS (
    SELECT
        s.id,
        {_OLD_FROM_L},
        l.contrib_parent AS o_contrib_parent,
        coalesce(l.contrib_settled, false) AS o_contrib_settled,
        coalesce(l.contrib_failed, 0) AS o_contrib_failed,
        -- A placeholder belongs to the execution its terminal event names.
        CASE WHEN w.sw THEN s.execution_id
             WHEN l.known THEN l.execution_id
             WHEN w.tw THEN s.term_execution_id
             ELSE l.execution_id END AS execution_id,
        {", ".join(f"CASE WHEN w.sw THEN s.{c} ELSE l.{c} END AS {c}" for c in _START_FIELDS)},
        CASE WHEN w.tw THEN s.status ELSE coalesce(l.status, 'pending') END AS status,
        {", ".join(f"CASE WHEN w.tw THEN s.{c} ELSE l.{c} END AS {c}" for c in _TERMINAL_FIELDS)},
        coalesce(l.children_registered, 0) AS children_registered,
        coalesce(l.children_settled, 0) AS children_settled,
        coalesce(l.descendants_failed, 0) AS descendants_failed
    FROM pg_temp.{STAGE_LINEAGE} s
    {_lookup("s")}
    CROSS JOIN LATERAL (
        SELECT
            s.start_event_id IS NOT NULL AND (
                l.start_event_id IS NULL
                OR (s.started_at, s.start_event_id) < (l.started_at, l.start_event_id)
            ) AS sw,
            s.terminal_event_id IS NOT NULL AND (
                l.terminal_event_id IS NULL
                OR (s.status_rank, s.completed_at, s.terminal_event_id)
                   > ({_rank("l.status")}, l.completed_at, l.terminal_event_id)
            ) AS tw
    ) w
    -- Neither event wins: a duplicate, nothing to write.
    WHERE w.sw OR w.tw
), k AS (
    SELECT j.*,
        CASE WHEN j.start_event_id IS NOT NULL THEN j.parent_id END AS contrib_parent,
        {_settled("j.")} AS settled
    FROM j
), m AS (
    INSERT INTO pg_temp.{WORK} (id, {", ".join(n for n, _ in _OLD)}, {", ".join(_COLS)})
    SELECT id, {", ".join(n for n, _ in _OLD)}, {", ".join(_COLS)}
    FROM (SELECT k.*, {_CONTRIB} FROM k) k
    RETURNING contrib_parent, contrib_settled, contrib_failed,
              o_contrib_parent, o_contrib_settled, o_contrib_failed
), up AS (
    INSERT INTO pg_temp.{DELTAS[0]} (id, dr, ds, df) {_DELTAS}
    RETURNING id
)
SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM up)
"""


def _propagate(source: str, target: str) -> str:
    """One level: the rows named in ``source`` take their deltas.

    A row already in the working set is updated there; any other is read from
    lineage into it with the delta applied (a parent that does not exist
    becomes a placeholder: known = false, status pending). Rows whose settled
    state or failed count changes leave their own deltas in ``target``.
    """
    # The row's own columns, as stored (a placeholder's status: pending).
    carried = ", ".join(
        "coalesce(l.status, 'pending') AS status" if c == "status" else f"l.{c}"
        for c in _COLS
        if c not in _COUNTERS and not c.startswith("contrib_")
    )
    return f"""
WITH d AS (
    DELETE FROM pg_temp.{source} RETURNING id, dr, ds, df
), dw AS (
    -- One probe of the working set per delta: found (a) or to be read (b).
    SELECT d.id, d.dr, d.ds, d.df, w.ctid AS wtid, w.status, w.children_expected,
           w.children_registered, w.children_settled, w.descendants_failed,
           w.contrib_parent, w.contrib_settled, w.contrib_failed
    FROM d LEFT JOIN pg_temp.{WORK} w ON w.id = d.id
), a AS (
    SELECT k.*, {_CONTRIB}
    FROM (
        SELECT
            w.id, w.wtid, w.status, w.children_expected,
            w.children_registered + w.dr AS children_registered,
            w.children_settled + w.ds AS children_settled,
            w.descendants_failed + w.df AS descendants_failed,
            w.contrib_parent,
            w.contrib_settled AS o_contrib_settled, w.contrib_failed AS o_contrib_failed,
            {_settled_delta("w.", "w.")} AS settled
        FROM dw w WHERE w.wtid IS NOT NULL
    ) k
), upd AS (
    UPDATE pg_temp.{WORK} w
    SET (children_registered, children_settled, descendants_failed,
         contrib_settled, contrib_failed)
      = (a.children_registered, a.children_settled, a.descendants_failed,
         a.contrib_settled, a.contrib_failed)
    FROM a WHERE w.ctid = a.wtid
), b AS (
    SELECT k.*, {_CONTRIB}
    FROM (
        SELECT
            d.id, {_OLD_FROM_L},
            l.contrib_parent,
            coalesce(l.contrib_settled, false) AS o_contrib_settled,
            coalesce(l.contrib_failed, 0) AS o_contrib_failed,
            {carried},
            coalesce(l.children_registered, 0) + d.dr AS children_registered,
            coalesce(l.children_settled, 0) + d.ds AS children_settled,
            coalesce(l.descendants_failed, 0) + d.df AS descendants_failed
        FROM dw d {_lookup("d")}
        WHERE d.wtid IS NULL
    ) j
    CROSS JOIN LATERAL (SELECT j.*, {_settled("j.")} AS settled) k
), ins AS (
    INSERT INTO pg_temp.{WORK} (id, {", ".join(n for n, _ in _OLD)}, {", ".join(_COLS)})
    SELECT id, tid, o_known, o_execution_id, o_route_id, o_adapter_name, o_status,
           o_settled, contrib_parent, o_contrib_settled, o_contrib_failed,
           {", ".join(_COLS)}
    FROM b
), m AS (
    SELECT contrib_parent, contrib_settled, contrib_failed, o_contrib_settled, o_contrib_failed
    FROM a
    UNION ALL
    SELECT contrib_parent, contrib_settled, contrib_failed, o_contrib_settled, o_contrib_failed
    FROM b
), up AS (
    INSERT INTO pg_temp.{target} (id, dr, ds, df)
    SELECT contrib_parent, 0,
           sum(contrib_settled::int - o_contrib_settled::int),
           sum(contrib_failed - o_contrib_failed)
    FROM m
    WHERE contrib_parent IS NOT NULL
    GROUP BY contrib_parent
    HAVING sum(contrib_settled::int - o_contrib_settled::int) <> 0
        OR sum(contrib_failed - o_contrib_failed) <> 0
    RETURNING id
)
SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM up)
"""


PROPAGATE = (_propagate(DELTAS[0], DELTAS[1]), _propagate(DELTAS[1], DELTAS[0]))

_COUNTS = ("completed", "failed", "cancelled", "pending")
_COUNT_COLUMNS = ("total", *_COUNTS, "unsettled")
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
        *(f"{c} = e.{c} + EXCLUDED.{c}" for c in _COUNT_COLUMNS),
    ]
)

# A working-set row whose counted state (known, execution, route, adapter,
# status, settled) differs from its old one: only those change the counts.
_COUNTED_CHANGE = f"""NOT (
            o_known AND start_event_id IS NOT NULL
            AND o_execution_id IS NOT DISTINCT FROM execution_id
            AND o_route_id IS NOT DISTINCT FROM route_id
            AND o_adapter_name IS NOT DISTINCT FROM adapter_name
            AND o_status = status AND o_settled = {_settled("")})"""

# A placeholder no child names any more: the only start that named it as parent
# lost to an earlier one naming another. A fresh projection of the same events
# never made it, so it goes (unknown rows count nowhere, nothing else changes).
_ORPHAN = "(w.start_event_id IS NULL AND w.terminal_event_id IS NULL AND w.children_registered = 0)"

# Every changed row into lineage in one pass over the working set: a new row is
# inserted, a stored one rewritten in place (found by its physical address), an
# orphaned placeholder deleted. Its row count is the rows written.
WRITE_ROWS = f"""
MERGE INTO {{lineage}} t
USING pg_temp.{WORK} w ON t.ctid = w.tid
WHEN MATCHED AND {_ORPHAN} THEN DELETE
WHEN MATCHED THEN
    UPDATE SET ({", ".join(_COLS)}) = ({", ".join(f"w.{c}" for c in _COLS)})
WHEN NOT MATCHED AND NOT {_ORPHAN} THEN
    INSERT (id, {", ".join(_COLS)}) VALUES (w.id, {", ".join(f"w.{c}" for c in _COLS)})
"""

# The stats and execution counts, from the working set's old and new states.
WRITE = f"""
WITH g AS (
    -- Each row's transition as signed contributions, summed per (execution,
    -- route, adapter): its old state taken away, its new state added (only
    -- known rows count). Rows whose counted state is unchanged (most parents
    -- that only took counter deltas) would cancel out: they are left out.
    SELECT execution_id, route_id, adapter_name,
           {", ".join(f"sum({c}) AS {c}" for c in _COUNT_COLUMNS)}
    FROM (
        SELECT o_execution_id AS execution_id, o_route_id AS route_id,
               o_adapter_name AS adapter_name, -1 AS total,
               {", ".join(f"-((o_status = '{c}')::int) AS {c}" for c in _COUNTS)},
               -((NOT o_settled)::int) AS unsettled
        FROM pg_temp.{WORK} WHERE o_known AND {_COUNTED_CHANGE}
        UNION ALL
        SELECT execution_id, route_id, adapter_name, 1,
               {", ".join(f"(status = '{c}')::int" for c in _COUNTS)},
               (NOT {_settled("")})::int
        FROM pg_temp.{WORK} WHERE start_event_id IS NOT NULL AND {_COUNTED_CHANGE}
    ) c
    GROUP BY execution_id, route_id, adapter_name
), sd AS (
    SELECT execution_id, route_id, adapter_name, total AS count, {", ".join(_COUNTS)}
    FROM g
    WHERE {" OR ".join(f"{c} <> 0" for c in ("total", *_COUNTS))}
), su AS (
    INSERT INTO {{stats}} AS st
        (execution_id, route_id, adapter_name, count, {", ".join(_COUNTS)})
    SELECT * FROM sd ORDER BY execution_id, route_id, adapter_name
    ON CONFLICT (execution_id, route_id, adapter_name) DO UPDATE SET
        {", ".join(f"{c} = st.{c} + EXCLUDED.{c}" for c in ("count", *_COUNTS))}
    RETURNING execution_id, route_id, adapter_name, count
), xd AS (
    SELECT execution_id, {", ".join(f"sum({c}) AS {c}" for c in _COUNT_COLUMNS)}
    FROM g
    GROUP BY execution_id
    HAVING {" OR ".join(f"sum({c}) <> 0" for c in _COUNT_COLUMNS)}
), x AS (
    SELECT coalesce(s.id, xd.execution_id) AS id,
           {", ".join(f"s.{c}" for c in (*_X_START_FIELDS, "finish_event_id", "error"))},
           coalesce(s.status, 'running') AS status, s.finished_at,
           {", ".join(f"coalesce(xd.{c}, 0) AS {c}" for c in _COUNT_COLUMNS)}
    FROM pg_temp.{STAGE_EXECUTIONS} s
    FULL JOIN xd ON xd.execution_id = s.id
), xu AS (
    INSERT INTO {{executions}} AS e
        (id, {", ".join((*_X_START_FIELDS, *_X_FINISH_FIELDS, *_COUNT_COLUMNS))})
    SELECT id, {", ".join((*_X_START_FIELDS, *_X_FINISH_FIELDS, *_COUNT_COLUMNS))}
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

    merge: bytes
    propagate: tuple[bytes, bytes]
    write_rows: bytes
    write: bytes
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
            merge=render(MERGE),
            propagate=(render(PROPAGATE[0]), render(PROPAGATE[1])),
            write_rows=render(WRITE_ROWS),
            write=render(WRITE),
            delete_stats=render(DELETE_STATS),
            delete_executions=render(DELETE_EXECUTIONS),
        )
