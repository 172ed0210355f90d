"""The projector end to end: Kafka -> decode -> PostgreSQL, beside its limit, and freshness.

    .venv/bin/python benchmarks/projector.py                     # 1,000,000 events
    .venv/bin/python benchmarks/projector.py --events 200000     # a quicker look

1. Realistic events (``tests/support/events.realistic_run``: chains 4-8 stages
   deep with fan-out, batches, ~2 % failures) are encoded and pre-produced to
   a fresh topic, keyed like the producer keys them (the chain's root id).
2. The real projector (``python -m factflow_lineage.consumer``, a child process)
   consumes them into a fresh schema. Sustained events/s and rows/s are taken
   from its first commit to its last (the stored offsets in PostgreSQL say
   when), so process start and group join are not counted.
3. The limit, measured in the same run: binary COPY of the same final lineage
   rows into an empty, identically indexed lineage table, in chunks of the
   same number of rows per transaction as the projector's batches held.
4. Freshness under load: the projector keeps running while new events are
   produced at ``--rate`` events/s; every 50th start is a probe, and a query
   thread polls the read side for the probes. Freshness = time from the
   producer's ``produce()`` call to the first query that sees the row.

Uses the stack the FACTFLOW_* variables point at; creates and drops its own
topic and schemas (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from _common import copy_limit, describe, generate
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from factflow_lineage.config import Settings
from factflow_lineage.consumer import load_offsets
from factflow_lineage.migrations import apply_migrations, projection_migrations
from factflow_lineage.schemas import encode


def keyed(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, value) messages as the producer writes them."""
    roots: dict[bytes, bytes] = {}
    out: list[tuple[bytes, bytes]] = []
    for e in events:
        p = e["payload"]
        if e["event_type"].startswith("EXECUTION_"):
            key = p["execution_id"]
        elif e["event_type"] == "INVOCATION_STARTED":
            roots[p["lineage_id"]] = key = p["root_id"]
        else:
            key = roots.get(p["lineage_id"], p["lineage_id"])
        out.append((key, encode(e)))
    return out


def producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "lz4",
        }
    )


def produce_all(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    p = producer(bootstrap)
    for i, (key, value) in enumerate(messages):
        while True:
            try:
                p.produce(topic, value, key=key)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    if p.flush(120):
        raise SystemExit("produce: messages left undelivered")


def stored(conn: psycopg.Connection[Any], schema: str, topic: str) -> int:
    """Messages projected: the sum of the stored next offsets (migrated before the run)."""
    return sum(load_offsets(conn, schema, topic).values())


def count(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    ).fetchone()
    return int(row[0]) if row else 0


def start_projector(
    settings: Settings, topic: str, schema: str, batch_max: int, log: Path, log_level: str
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        FACTFLOW_KAFKA_BOOTSTRAP=settings.kafka.bootstrap,
        FACTFLOW_TOPIC=topic,
        FACTFLOW_PG_DSN=settings.postgres.dsn,
        FACTFLOW_PG_SCHEMA=schema,
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "factflow_lineage.consumer",
            "--group",
            f"bench-{uuid.uuid4().hex[:8]}",
            "--batch-max",
            str(batch_max),
            "--log-level",
            log_level,
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop_projector(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM; the exit status and the CPU seconds (user + system) the process used."""
    proc.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def freshness(
    settings: Settings,
    topic: str,
    schema: str,
    rate: float,
    seconds: float,
    seed: int,
) -> tuple[list[float], int, float, int]:
    """Latencies (s) from produce() to visible, of probe rows emitted at ``rate`` events/s.

    Also: probes never seen, the rate achieved, and the messages produced.
    """
    events = generate(int(rate * seconds), seed)
    messages = keyed(events)
    probes: dict[bytes, float] = {}  # lineage id -> emit time
    probe_ids: set[bytes] = set()
    for i, e in enumerate(events):
        if e["event_type"] == "INVOCATION_STARTED" and i % 50 == 0:
            probe_ids.add(e["payload"]["lineage_id"])
    seen: dict[bytes, float] = {}
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(settings.postgres.read_dsn, autocommit=True) as conn:
            while not done.is_set() or len(seen) < len(probes):
                pending = [p for p in list(probes) if p not in seen]
                if pending:
                    rows = conn.execute(
                        sql.SQL("SELECT id FROM {} WHERE id = ANY(%s::uuid[])").format(
                            sql.Identifier(schema, "lineage")
                        ),
                        ([uuid.UUID(bytes=p) for p in pending],),
                    ).fetchall()
                    now = time.perf_counter()
                    for (found,) in rows:
                        seen.setdefault(found.bytes, now)
                if done.is_set() and time.perf_counter() - done_at[0] > 30:
                    return  # probes never seen count as lost below
                time.sleep(0.005)

    done_at = [0.0]
    watcher = threading.Thread(target=watch)
    watcher.start()
    p = producer(settings.kafka.bootstrap)
    started = time.perf_counter()
    # Every 2 ms, what is due by then: the generator's own CPU stays small
    # (a busy wait per message took a core of this 2-core machine from the
    # projector and the database, and the figure with it).
    sent = 0
    while sent < len(messages):
        due = min(len(messages), int((time.perf_counter() - started) * rate) + 1)
        for i in range(sent, due):
            key, value = messages[i]
            p.produce(topic, value, key=key)
            event = events[i]
            if event["event_type"] == "INVOCATION_STARTED":
                lid = event["payload"]["lineage_id"]
                if lid in probe_ids:
                    probes[lid] = time.perf_counter()
        sent = due
        p.poll(0)
        time.sleep(0.002)
    p.flush(60)
    emitted = time.perf_counter() - started
    done_at[0] = time.perf_counter()
    done.set()
    watcher.join()
    latencies = [seen[k] - t for k, t in probes.items() if k in seen]
    return latencies, len(probes) - len(latencies), len(messages) / emitted, len(messages)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--batch-max", type=int, default=50_000)
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        help="freshness load in events/s, repeatable (default: 1/4 and 1/2 of the measured rate)",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="freshness phase length")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep topic and schemas")
    parser.add_argument(
        "--projector-log-level", default="WARNING", help="DEBUG logs every batch and its time"
    )
    args = parser.parse_args()

    settings = Settings.from_env()
    tag = uuid.uuid4().hex[:8]
    topic, schema, limit_schema = f"bench.projector.{tag}", f"bench_{tag}", f"bench_{tag}_limit"
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    admin.create_topics(
        [NewTopic(topic, num_partitions=args.partitions, config={"retention.ms": "-1"})]
    )[topic].result(30)
    log = Path(f"/tmp/bench-projector-{tag}.log")
    conn = psycopg.connect(settings.postgres.dsn, autocommit=True)
    try:
        t = time.perf_counter()
        events = generate(args.events, args.seed)
        messages = keyed(events)
        print(f"generated and encoded {len(events):,} events in {time.perf_counter() - t:.1f} s")
        print(f"stream: {describe(events)}")
        t = time.perf_counter()
        produce_all(settings.kafka.bootstrap, topic, messages)
        print(
            f"produced to {topic} ({args.partitions} partitions) in {time.perf_counter() - t:.1f} s"
        )
        for s in (schema, limit_schema):
            apply_migrations(conn, s, projection_migrations())
        print(
            f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
            "(other work on the machine skews every figure)"
        )

        # -- throughput ------------------------------------------------------------------
        launched = time.perf_counter()
        proc = start_projector(
            settings, topic, schema, args.batch_max, log, args.projector_log_level
        )
        first = last = 0.0
        first_count = 0
        while True:
            n = stored(conn, schema, topic)
            now = time.perf_counter()
            if n and not first:
                first, first_count = now, n
            if n >= len(messages):
                last = now
                break
            if proc.poll() is not None:
                raise SystemExit(f"projector exited {proc.returncode}: see {log}")
            time.sleep(0.02)
        rows = count(conn, schema, "lineage")
        sustained = (len(messages) - first_count) / (last - first)
        wall = len(messages) / (last - launched)
        row_rate = rows * (len(messages) - first_count) / len(messages) / (last - first)
        batches = max(1, round(len(messages) / args.batch_max))

        print(
            f"events: {len(messages):,}; lineage rows: {rows:,}; "
            f"executions: {count(conn, schema, 'executions'):,}"
        )
        print(
            f"projector: {sustained:10,.0f} events/s  {row_rate:10,.0f} rows/s  "
            f"(sustained, first to last commit: {last - first:.1f} s; "
            f"{wall:,.0f} events/s from process start)",
            flush=True,
        )

        # -- limit -----------------------------------------------------------------------
        copied, copy_s = copy_limit(conn, schema, limit_schema, max(1, rows // batches))
        limit_rows = copied / copy_s
        limit_events = len(messages) / copy_s
        print(
            f"limit:     {limit_events:10,.0f} events/s  {limit_rows:10,.0f} rows/s  "
            f"({copy_s:.1f} s: binary COPY of the final rows into the indexed table, "
            f"{max(1, rows // batches):,} rows per transaction)"
        )
        print(
            f"projector / limit: {row_rate / limit_rows:.0%}   goal: >= 50 % and >= 50,000 events/s"
        )

        # -- freshness under load ----------------------------------------------------------
        rates = args.rate or [max(500.0, sustained / 4), max(1000.0, sustained / 2)]
        extra = 0
        for i, rate in enumerate(rates):
            latencies, lost, achieved, produced = freshness(
                settings, topic, schema, rate, args.seconds, args.seed + 1 + i
            )
            if latencies:
                print(
                    f"freshness at {achieved:,.0f} events/s for {args.seconds:.0f} s "
                    f"({len(latencies)} probes, {lost} not seen): "
                    f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms  "
                    f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms  "
                    f"max {max(latencies) * 1000:.0f} ms  "
                    f"mean {statistics.fmean(latencies) * 1000:.0f} ms",
                    flush=True,
                )
            # Let the projector drain before the next load step.
            extra += produced
            while stored(conn, schema, topic) < len(messages) + extra:
                time.sleep(0.1)
        code, cpu = stop_projector(proc)
        print(f"projector process: exit {code}, {cpu:.1f} CPU s over the whole run; log {log}")
    finally:
        if not args.keep:
            for s in (schema, limit_schema):
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s)))
            admin.delete_topics([topic])
        conn.close()


if __name__ == "__main__":
    main()
