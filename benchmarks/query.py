"""Query-side latency on a big projection, each figure beside its goal (issue 5).

    .venv/bin/python benchmarks/query.py                 # 10,000,000 rows (generation: minutes)
    .venv/bin/python benchmarks/query.py --rows 1000000  # smaller
    .venv/bin/python benchmarks/query.py --reuse         # keep an already generated schema
    .venv/bin/python benchmarks/query.py --verbose       # EXPLAIN (ANALYZE, BUFFERS) per query

The projection is generated straight into the tables of its own schema
(``bench_query`` unless ``--schema``), built by the real migrations: many
executions, one of 1,000,000 rows (a tenth of ``--rows`` when smaller), trees
5-20 levels deep with fan-out, some of exactly 1,000 nodes, about 2 % failed
rows (a failure ends its branch), the newest executions still running. Rows go
in by binary COPY with the indexes dropped, which are then rebuilt from their
own definitions, so the migration stays the single source of the DDL.

Queries run through the same functions the CLI and the API call, on the
read-only role, and the figure is the time the caller waits (SQL and rows
turned into objects). Every query's plan is checked: a sequential scan on
``lineage`` is reported as a regression even without ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from factflow_lineage.config import Settings
from factflow_lineage.db import connect
from factflow_lineage.errors import UsageError
from factflow_lineage.migrations import apply_migrations, projection_migrations
from factflow_lineage.query import _queries as q
from factflow_lineage.query._ids import Cursor, encode_cursor

GOALS_MS = {
    "get": 5.0,
    "get (8-hex prefix)": 5.0,
    "children": 10.0,
    "chain (1,000-node DAG)": 50.0,
    "failures (latest 50)": 20.0,
    "failures (one execution)": 20.0,
    "stats (largest execution)": 20.0,
    "list page": 20.0,
    "list page (status=failed)": 20.0,
}
ROUTES = ("sitemap_scraper", "feed_reader", "pdf_ingest", "api_sync", "mail_digest")
# One adapter per level of a tree (trees are at most 20 deep).
VERBS = (
    "parse expand fetch clean split embed tag score link dedupe "
    "enrich rank store index notify audit pack ship trace close"
)
STAGES = tuple(f"{verb}_{i:02d}" for i, verb in enumerate(VERBS.split(" ")))
ERRORS = ("HTTPError", "ParseError", "TimeoutError", "ValidationError")
FAIL_P = 0.02
BIG_TREE = 1000
# The pending share lives in the newest executions, which are still running.
RUNNING_EXECUTIONS = 2
LINEAGE_COPY = (
    "id, execution_id, root_id, parent_id, route_id, adapter_name, status, input_hash,"
    " output_hash, error, started_at, completed_at, batch_id, input_key, metadata,"
    " children_expected, children_registered, children_settled, descendants_failed,"
    " start_event_id, terminal_event_id"
)
LINEAGE_TYPES = [
    "uuid", "uuid", "uuid", "uuid", "text", "text", "text", "text", "text", "jsonb",
    "timestamptz", "timestamptz", "uuid", "text", "jsonb", "int4", "int4", "int4", "int4",
    "uuid", "uuid",
]  # fmt: skip


# --- generation -------------------------------------------------------------------


@dataclass
class Node:
    id: uuid.UUID
    parent: Node | None
    level: int
    status: str
    started: datetime
    children: list[Node] = field(default_factory=list)
    failed_below: int = 0
    settled: bool = True


@dataclass
class ExecutionStats:
    id: uuid.UUID
    started: datetime
    running: bool
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("completed", "failed", "cancelled", "pending"), 0)
    )
    unsettled: int = 0
    last: datetime | None = None
    per_stage: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)


class Generator:
    """Trees of nodes, streamed execution by execution into COPY rows."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.trees = 0
        self.big_roots: list[uuid.UUID] = []

    def uid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128))

    def tree(self, start: datetime, running: bool) -> list[Node]:
        """One message's tree: a root, a fan-out, chains 5-20 deep (or 1,000 nodes exactly)."""
        rng = self.rng
        big = self.trees < 20 or rng.random() < 0.001
        self.trees += 1
        depth = 12 if big else rng.randint(5, 20)
        root = Node(self.uid(), None, 0, "completed", start)
        nodes = [root]
        frontier = [root]
        limit = BIG_TREE if big else 10**9
        while frontier and len(nodes) < limit:
            nxt: list[Node] = []
            for parent in frontier:
                if parent.status != "completed" or parent.level + 1 >= depth:
                    continue
                if big:
                    fan = 3
                elif parent.level == 1:
                    fan = rng.randint(1, 8)  # the expander: one message, many URLs
                else:
                    fan = 1 if rng.random() < 0.9 else 2
                for _ in range(fan):
                    if len(nodes) >= limit:
                        break
                    status = "completed"
                    if running and rng.random() < 0.3:
                        status = "pending"
                    elif rng.random() < FAIL_P:
                        status = "failed"
                    child = Node(
                        self.uid(),
                        parent,
                        parent.level + 1,
                        status,
                        parent.started + timedelta(milliseconds=rng.randint(1, 400)),
                    )
                    parent.children.append(child)
                    nodes.append(child)
                    nxt.append(child)
            frontier = nxt
        if big and len(nodes) == BIG_TREE:  # pending or failed rows can stunt a tree
            self.big_roots.append(root.id)
        for node in reversed(nodes):  # children before parents
            node.settled = node.status != "pending" and all(c.settled for c in node.children)
            node.failed_below = sum((c.status == "failed") + c.failed_below for c in node.children)
        return nodes

    def execution(self, ex: ExecutionStats, size: int) -> Iterator[tuple[Any, ...]]:
        """COPY rows of one execution of about ``size`` rows; ``ex`` collects its counts."""
        made = 0
        batch: uuid.UUID | None = None
        in_batch = 100
        start = ex.started
        while made < size:
            route = self.rng.choice(ROUTES)
            nodes = self.tree(start, ex.running)
            start += timedelta(milliseconds=self.rng.randint(1, 50))
            root = nodes[0]
            for node in nodes:
                batch_id = None
                if node.level == 2:  # the scraper stage works in batches of 100
                    if in_batch >= 100:
                        batch, in_batch = self.uid(), 0
                    batch_id, in_batch = batch, in_batch + 1
                yield self.row(ex, route, root.id, node, batch_id)
            made += len(nodes)

    def row(
        self,
        ex: ExecutionStats,
        route: str,
        root: uuid.UUID,
        node: Node,
        batch_id: uuid.UUID | None,
    ) -> tuple[Any, ...]:
        stage = STAGES[node.level]
        status = node.status
        done = None if status == "pending" else node.started + timedelta(milliseconds=5)
        key = f"executions/{ex.id}/{route}/{stage}/{node.id}"
        error = None
        if status == "failed":
            cls = self.rng.choice(ERRORS)
            error = Jsonb(
                {
                    "class": cls,
                    "message": f"{cls}: cannot process {key}",
                    "traceback": f'Traceback (most recent call last):\n  File "{stage}.py"\n{cls}',
                }
            )
        ex.counts[status] += 1
        ex.unsettled += not node.settled
        if done is not None and (ex.last is None or done > ex.last):
            ex.last = done
        per = ex.per_stage.setdefault(
            (route, stage), dict.fromkeys(("completed", "failed", "cancelled", "pending"), 0)
        )
        per[status] += 1
        kids = len(node.children)
        return (
            node.id,
            ex.id,
            root,
            node.parent.id if node.parent else None,
            route,
            stage,
            status,
            f"sha256:{node.id.hex[:24]}",
            None if status != "completed" else f"sha256:{node.id.hex[8:]}",
            error,
            node.started,
            done,
            batch_id,
            key,
            Jsonb({"input_key": key, "attempt": 1}),
            None if status == "pending" else kids,
            kids,
            sum(1 for c in node.children if c.settled),
            node.failed_below,
            self.uid(),
            None if status == "pending" else self.uid(),
        )


def plan_executions(rows: int, rng: random.Random) -> list[int]:
    """Sizes of the executions: one big one, the rest 1,000-20,000 rows each."""
    big = min(1_000_000, max(rows // 10, 1000))
    sizes = [big]
    left = rows - big
    while left > 0:
        size = min(left, rng.randint(1000, 20_000))
        sizes.append(size)
        left -= size
    rng.shuffle(sizes)
    return sizes


def generate(dsn: str, schema: str, rows: int, seed: int) -> None:
    """Build ``schema`` from the migrations and fill it with about ``rows`` lineage rows."""
    rng = random.Random(seed)
    began = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        apply_migrations(conn, schema, projection_migrations())
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("SET maintenance_work_mem = '1GB'")
        indexes = [
            r[0]
            for r in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'lineage'"
                " AND indexname <> 'lineage_pkey'",
                (schema,),
            )
        ]
        for name in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'lineage'"
            " AND indexname <> 'lineage_pkey'",
            (schema,),
        ).fetchall():
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name[0])))
        conn.execute("ALTER TABLE lineage DROP CONSTRAINT lineage_pkey")

        gen = Generator(rng)
        sizes = plan_executions(rows, rng)
        span = timedelta(days=30)
        first = datetime.now(UTC) - span
        executions: list[ExecutionStats] = []
        big_execution = None
        written = 0
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY lineage ({LINEAGE_COPY}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(LINEAGE_TYPES)
            for i, size in enumerate(sizes):
                ex = ExecutionStats(
                    id=gen.uid(),
                    started=first + span * i / len(sizes),
                    running=i >= len(sizes) - RUNNING_EXECUTIONS,
                )
                executions.append(ex)
                if size == max(sizes) and big_execution is None:
                    big_execution = ex.id
                for row in gen.execution(ex, size):
                    copy.write_row(row)
                    written += 1
                if i % 50 == 0:
                    rate = written / (time.perf_counter() - began)
                    print(f"  {written:>11,} rows copied ({rate:,.0f}/s)", file=sys.stderr)
        print(f"  {written:,} rows copied in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        _write_executions(conn, executions)
        built = time.perf_counter()
        conn.execute("ALTER TABLE lineage ADD PRIMARY KEY (id)")
        for definition in indexes:
            conn.execute(definition)
        print(f"  indexes built in {time.perf_counter() - built:.0f} s", file=sys.stderr)
        conn.execute("VACUUM (ANALYZE) lineage")
        conn.execute("VACUUM (ANALYZE) executions")
        conn.execute("VACUUM (ANALYZE) lineage_stats")
        conn.execute(
            "CREATE TABLE bench_info (rows bigint, seed int, big_execution uuid, big_roots uuid[])"
        )
        conn.execute(
            "INSERT INTO bench_info VALUES (%s, %s, %s, %s)",
            (rows, seed, big_execution, gen.big_roots),
        )
    print(f"generated in {time.perf_counter() - began:.0f} s", file=sys.stderr)


def _write_executions(conn: psycopg.Connection[Any], executions: list[ExecutionStats]) -> None:
    with conn.cursor() as cur:
        with cur.copy(
            "COPY executions (id, pipeline, status, started_at, finished_at, metadata,"
            " start_event_id, total, completed, failed, cancelled, pending, unsettled)"
            " FROM STDIN"
        ) as copy:
            for ex in executions:
                c = ex.counts
                status = "running" if ex.running else ("failed" if c["failed"] else "completed")
                copy.write_row(
                    (
                        ex.id, "bench", status, ex.started, None if ex.running else ex.last,
                        json.dumps({"bench": True}), uuid.uuid4(), sum(c.values()),
                        c["completed"], c["failed"], c["cancelled"], c["pending"], ex.unsettled,
                    )
                )  # fmt: skip
        with cur.copy("COPY lineage_stats FROM STDIN") as copy:
            for ex in executions:
                for (route, stage), per in ex.per_stage.items():
                    copy.write_row(
                        (ex.id, route, stage, sum(per.values()), per["completed"],
                         per["failed"], per["cancelled"], per["pending"])
                    )  # fmt: skip


# --- measuring ----------------------------------------------------------------------


class Explaining:
    """A connection stand-in that EXPLAINs each query before running it."""

    def __init__(self, conn: psycopg.Connection[Any], analyze: bool) -> None:
        self.conn = conn
        self.analyze = analyze
        self.plans: list[str] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if self.analyze else "EXPLAIN "
        explain = (
            sql.SQL(prefix) + query
            if isinstance(query, sql.Composable)
            else sql.SQL(prefix) + sql.SQL(query)
        )
        plan = "\n".join(r[0] for r in self.conn.execute(explain, params))
        self.plans.append(plan)
        return self.conn.execute(query, params, **kwargs)


@dataclass
class Figure:
    name: str
    p50: float
    p99: float
    samples: int
    seq_scan: bool


def measure(
    conn: psycopg.Connection[Any],
    name: str,
    call: Callable[[Any, Any], object],
    args: list[Any],
    verbose: bool,
) -> Figure:
    explaining = Explaining(conn, analyze=verbose)
    call(explaining, args[0])
    seq_scan = any("Seq Scan on lineage" in plan for plan in explaining.plans)
    if verbose:
        print(f"\n--- {name}: plans of one call ---")
        for plan in explaining.plans:
            print(plan, end="\n\n")
    for arg in args[: min(20, len(args))]:  # warm the caches and the connection
        call(conn, arg)
    times = []
    for arg in args:
        began = time.perf_counter()
        call(conn, arg)
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return Figure(name, statistics.median(times), p99, len(times), seq_scan)


def sample(conn: psycopg.Connection[Any], query: str, want: int, total: int) -> list[Any]:
    percent = min(100.0, want * 400 / max(total, 1))
    found = [r[0] for r in conn.execute(query.format(pct=percent))]
    return found


def run(settings: Settings, schema: str, samples: int, verbose: bool) -> list[Figure]:
    with connect(settings.postgres.read_dsn, schema=schema, autocommit=True) as conn:
        info = conn.execute("SELECT big_execution, big_roots FROM bench_info").fetchone()
        assert info is not None
        big_execution, big_roots = info
        total = conn.execute("SELECT count(*) FROM lineage").fetchone()
        assert total is not None
        failed = conn.execute("SELECT count(*) FROM lineage WHERE status = 'failed'").fetchone()
        assert failed is not None
        big_rows = conn.execute(
            "SELECT total FROM executions WHERE id = %s", (big_execution,)
        ).fetchone()
        assert big_rows is not None
        print(
            f"schema {schema}: {total[0]:,} lineage rows ({failed[0] / total[0]:.2%} failed), "
            f"largest execution {big_rows[0]:,} rows, {len(big_roots)} trees of 1,000 nodes"
        )
        rng = random.Random(7)
        ids = sample(
            conn,
            "SELECT id FROM lineage TABLESAMPLE SYSTEM ({pct}) WHERE known",
            samples,
            total[0],
        )
        parents = sample(
            conn,
            "SELECT DISTINCT parent_id FROM lineage TABLESAMPLE SYSTEM ({pct})"
            " WHERE parent_id IS NOT NULL",
            samples,
            total[0],
        )
        executions = [r[0] for r in conn.execute("SELECT id FROM executions")]
        keys = [
            (r[0], r[1])
            for r in conn.execute(
                sql.SQL(
                    "SELECT started_at, id FROM lineage TABLESAMPLE SYSTEM ({})"
                    " WHERE execution_id = %s"
                ).format(min(100.0, samples * 4000 / total[0])),
                (big_execution,),
            )
        ]
        rng.shuffle(ids)
        rng.shuffle(parents)
        rng.shuffle(keys)
        ids, parents, keys = ids[:samples], parents[:samples], keys[:samples]
        cursors = [encode_cursor(Cursor(kind="lineage", at=at, id=i)) for at, i in keys]
        prefixes = [str(i)[:8] for i in ids]
        chain_roots = [rng.choice(big_roots) for _ in range(max(samples // 5, 20))]
        few = [None] * max(samples // 5, 20)

        def unique_prefix(c: Any, p: str) -> object:
            try:
                return q.get_lineage(c, p)
            except UsageError:  # an 8-digit collision among millions: skip it
                return None

        figures = [
            measure(conn, "get", lambda c, a: q.get_lineage(c, a), ids, verbose),
            measure(conn, "get (8-hex prefix)", unique_prefix, prefixes, verbose),
            measure(conn, "children", lambda c, a: q.children(c, a), parents, verbose),
            measure(
                conn,
                "chain (1,000-node DAG)",
                lambda c, a: _check_chain(q.chain(c, a)),
                chain_roots,
                verbose,
            ),
            measure(
                conn, "failures (latest 50)", lambda c, a: q.failures(c, limit=50), few, verbose
            ),
            measure(
                conn,
                "failures (one execution)",
                lambda c, a: q.failures(c, execution=a, limit=50),
                [rng.choice(executions) for _ in range(samples)],
                verbose,
            ),
            measure(
                conn,
                "stats (largest execution)",
                lambda c, a: q.stats(c, big_execution),
                few,
                verbose,
            ),
            measure(
                conn,
                "list page",
                lambda c, a: q.list_lineage(c, execution=big_execution, limit=50, cursor=a),
                cursors,
                verbose,
            ),
            measure(
                conn,
                "list page (status=failed)",
                lambda c, a: q.list_lineage(
                    c, execution=big_execution, status="failed", limit=50, cursor=a
                ),
                cursors,
                verbose,
            ),
        ]
    return figures


def _check_chain(result: Any) -> object:
    # A benchmark of the wrong thing is worse than none: the DAG must be whole.
    if len(result.nodes) != BIG_TREE or result.truncated:
        raise SystemExit(f"chain returned {len(result.nodes)} nodes, expected {BIG_TREE}")
    return result


def report(figures: list[Figure]) -> bool:
    print(f"\n{'query':<34}{'p50 ms':>9}{'p99 ms':>9}{'goal':>10}  {'n':>5}  verdict")
    ok = True
    for f in figures:
        goal = GOALS_MS[f.name]
        verdict = "ok" if f.p99 < goal else "SLOW"
        if f.seq_scan:
            verdict += "  SEQ SCAN on lineage"
        ok = ok and f.p99 < goal and not f.seq_scan
        goal_text = f"< {goal:g}"
        print(f"{f.name:<34}{f.p50:>9.2f}{f.p99:>9.2f}{goal_text:>10}  {f.samples:>5}  {verdict}")
    print("\n(goal compared with p99; times include turning rows into objects)")
    return ok


def exists(dsn: str, schema: str, rows: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s"
            " AND table_name = 'bench_info'",
            (schema,),
        ).fetchone()
        if found is None:
            return False
        have = conn.execute(
            sql.SQL("SELECT rows FROM {}.bench_info").format(sql.Identifier(schema))
        ).fetchone()
    return have is not None and have[0] == rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="lineage rows to generate")
    parser.add_argument("--schema", default="bench_query", help="schema to generate into")
    parser.add_argument("--reuse", action="store_true", help="keep a schema of the same --rows")
    parser.add_argument("--samples", type=int, default=1000, help="random ids per query")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.reuse and exists(settings.postgres.dsn, args.schema, args.rows):
        print(f"reusing schema {args.schema} ({args.rows:,} rows)", file=sys.stderr)
    else:
        print(f"generating {args.rows:,} rows into schema {args.schema}", file=sys.stderr)
        generate(settings.postgres.dsn, args.schema, args.rows, args.seed)
    figures = run(settings, args.schema, args.samples, args.verbose)
    return 0 if report(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
