"""The projection writer alone: events/s through ``Projection.apply``, beside its limit.

    .venv/bin/python benchmarks/projection_writer.py                   # 500,000 events
    .venv/bin/python benchmarks/projection_writer.py --events 1000000 --batch 20000
    .venv/bin/python benchmarks/projection_writer.py --check           # and compare with the model

Realistic events (``tests/support/events.realistic_run``: chains 4-8 stages deep
with fan-out, batches, ~2 % failures, starts and completions interleaved as
a stream at ~50,000 events/s delivers them) are applied in consecutive batches,
one transaction each, into a fresh schema built by the real migrations. No
Kafka, no decoding: the figure is the writer's own (planning, COPY, SQL).

The limit, measured in the same run: binary COPY of the same final lineage rows
into an empty, identically indexed lineage table, in chunks of the same number
of rows per transaction. The writer does more (merges, counters, stats), so
half the limit is the goal of issue 4.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factflow_lineage.config import Settings
from factflow_lineage.consumer._projection import Projection
from factflow_lineage.migrations import apply_migrations, projection_migrations
from tests.support import reference_model
from tests.support.events import RunShape, batches, realistic_run

# The table's own columns (generated ones are computed on insert).
COLUMNS = [
    c
    for c in reference_model.LINEAGE_COLUMNS
    if c not in {"known", "children_pending", "settled", "failed_at"}
]


BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
BINARY_TRAILER = b"\xff\xff"


def split_binary_copy(data: bytes) -> list[bytes]:
    """The tuples of a binary COPY stream, each as its own bytes (header and trailer cut)."""
    ext = int.from_bytes(data[15:19], "big")
    pos = 19 + ext
    tuples: list[bytes] = []
    while True:
        fields = int.from_bytes(data[pos : pos + 2], "big", signed=True)
        if fields == -1:
            return tuples
        end = pos + 2
        for _ in range(fields):
            size = int.from_bytes(data[end : end + 4], "big", signed=True)
            end += 4 + max(size, 0)
        tuples.append(data[pos:end])
        pos = end


def generate(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    while len(events) < n:
        events += realistic_run(rng, RunShape(executions=4, roots=40))
    # Executions generated one after another would each have their own time
    # window; as one stream they interleave.
    events.sort(key=lambda e: e["occurred_at"])
    return events[:n]


def cpu_seconds(pid: int) -> float | None:
    """CPU time a local server process used so far (None when it is not local)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fresh(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    apply_migrations(conn, schema, projection_migrations())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--schema", default="bench_writer")
    parser.add_argument("--check", action="store_true", help="compare with the reference model")
    parser.add_argument("--keep", action="store_true", help="keep the schemas afterwards")
    args = parser.parse_args()

    dsn = Settings.from_env().postgres.dsn
    t = time.perf_counter()
    events = generate(args.events, args.seed)
    print(f"generated {len(events):,} events in {time.perf_counter() - t:.1f} s", flush=True)
    # A consumer holds one batch at a time, not the whole run: keep the garbage
    # collector from walking the generated million events again and again.
    gc.freeze()
    limit_schema = f"{args.schema}_limit"
    with psycopg.connect(dsn, autocommit=True) as conn:
        fresh(conn, args.schema)
        fresh(conn, limit_schema)
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; other work skews figures)")

        projection = Projection(args.schema)
        levels = touched = n_batches = 0
        backend = conn.info.backend_pid
        wal0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        cpu0, server0 = time.process_time(), cpu_seconds(backend)
        t = time.perf_counter()
        for chunk in batches(events, args.batch):
            with conn.transaction():
                stats = projection.apply(conn, chunk)
            levels += stats.levels
            touched += stats.rows_touched
            n_batches += 1
        writer = time.perf_counter() - t
        client_cpu = time.process_time() - cpu0
        server1 = cpu_seconds(backend)
        server_cpu = None if server0 is None or server1 is None else server1 - server0
        wal = conn.execute("SELECT pg_current_wal_lsn() - %s", wal0).fetchone()
        rows = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(args.schema, "lineage"))
        ).fetchone()
        n_rows = rows[0] if rows else 0

        # The limit: the same final rows, binary COPY, same rows per transaction.
        cols = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL(
                    "COPY (SELECT {} FROM {} ORDER BY started_at NULLS LAST)"
                    " TO STDOUT (FORMAT BINARY)"
                ).format(cols, sql.Identifier(args.schema, "lineage"))
            ) as copy,
        ):
            tuples = split_binary_copy(b"".join(bytes(block) for block in copy))
        rows_per_batch = max(1, n_rows // max(n_batches, 1))
        copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(limit_schema, "lineage"), cols
        )
        t = time.perf_counter()
        for i in range(0, len(tuples), rows_per_batch):
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_in) as copy:
                copy.write(
                    BINARY_HEADER + b"".join(tuples[i : i + rows_per_batch]) + BINARY_TRAILER
                )
        limit = time.perf_counter() - t

        print(f"batches: {n_batches:,} of {args.batch:,} events; lineage rows: {n_rows:,}")
        print(
            f"propagation levels per batch: {levels / max(n_batches, 1):.1f}; "
            f"rows touched per batch: {touched / max(n_batches, 1):,.0f}"
        )
        print(
            f"writer: {len(events) / writer:10,.0f} events/s  {n_rows / writer:10,.0f} rows/s"
            f"  ({writer:.1f} s)"
        )
        print(
            f"limit:  {len(events) / limit:10,.0f} events/s  {n_rows / limit:10,.0f} rows/s"
            f"  ({limit:.1f} s, COPY of the final rows into the indexed table)"
        )
        print(f"writer / limit: {limit / writer:.0%}   goal: >= 50 % and >= 50,000 events/s")
        if server_cpu is not None:
            print(
                f"CPU per event: client {client_cpu / len(events) * 1e6:.1f} us, server "
                f"{server_cpu / len(events) * 1e6:.1f} us (one core each, uncontended, would "
                f"run {len(events) / (client_cpu + server_cpu):,.0f} events/s)"
            )
        if wal:
            print(f"WAL: {int(wal[0]) / len(events):,.0f} bytes per event")

        if args.check:
            want = reference_model.project(events)
            got = reference_model.dump(conn, args.schema)
            same = all(want[k] == got[k] for k in want)
            print(f"equal to the reference model: {same}")
            if not same:
                sys.exit(1)
        if not args.keep:
            for schema in (args.schema, limit_schema):
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    main()
