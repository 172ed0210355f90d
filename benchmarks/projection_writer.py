"""The projection writer alone: events/s through ``Projection.apply``, beside its limit.

    .venv/bin/python benchmarks/projection_writer.py                   # 500,000 events
    .venv/bin/python benchmarks/projection_writer.py --events 1000000 --batch 20000
    .venv/bin/python benchmarks/projection_writer.py --check           # and compare with the model

Realistic events (``tests/support/events.realistic_run``: chains 4-8 stages deep
with fan-out, batches, ~2 % failures, starts and completions interleaved as
a stream at ~50,000 events/s delivers them) are applied in consecutive batches,
one transaction each, into a fresh schema built by the real migrations. No
Kafka, no decoding: the figure is the writer's own (planning, fold, COPY, SQL),
one after the other in one thread, with no pipelining; rows touched per event
show how much a batch size coalesces.

The limit, measured in the same run: binary COPY of the same final lineage rows
into an empty, identically indexed lineage table, in chunks of the same number
of rows per transaction. Issue 4's goal (half the limit) is the whole
projector's, which plans in a worker process while this writes:
benchmarks/projector.py.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from _common import copy_limit, describe, generate
from psycopg import sql

from factflow_lineage.config import Settings
from factflow_lineage.consumer._projection import Projection
from factflow_lineage.migrations import apply_migrations, projection_migrations
from support import reference_model
from support.events import batches


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
    print(f"stream: {describe(events)}", flush=True)
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
        _, limit = copy_limit(conn, args.schema, limit_schema, max(1, n_rows // max(n_batches, 1)))

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
        print(
            f"writer / limit: {limit / writer:.0%}   (one thread: planning, fold and SQL in turn;"
            " issue 4's goal is the projector's, benchmarks/projector.py)"
        )
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
