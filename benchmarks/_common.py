"""What the projector benchmarks share: the event stream and the COPY limit.

* ``generate``: the realistic stream (``tests/support/events.realistic_stream``)
  both benchmarks project, and ``describe`` says what shape it has.
* ``copy_limit``: the limit both compare with, binary COPY of the projection's
  final lineage rows into an empty, identically indexed lineage table.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.events import RunShape, realistic_stream

BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
BINARY_TRAILER = b"\xff\xff"


def generate(n: int, seed: int, rate: float = RunShape.rate) -> list[dict[str, Any]]:
    """``n`` events of interleaved realistic executions, a stream at ``rate`` events/s."""
    return realistic_stream(random.Random(seed), n, RunShape(executions=4, roots=40, rate=rate))


def describe(events: list[dict[str, Any]]) -> str:
    """The stream's shape in one line: rows, and how far a start lies from its end."""
    started: dict[bytes, int] = {}
    apart: list[int] = []
    for i, e in enumerate(events):
        if e["event_type"] == "INVOCATION_STARTED":
            started[e["payload"]["lineage_id"]] = i
        elif e["event_type"].startswith("INVOCATION_"):
            begun = started.get(e["payload"]["lineage_id"])
            if begun is not None:
                apart.append(i - begun)
    if not apart:
        return f"{len(events):,} events"
    apart.sort()
    span = (events[-1]["occurred_at"] - events[0]["occurred_at"]) / 1e6
    return (
        f"{len(events):,} events over {span:.1f} s of event time; {len(started):,} invocations; "
        f"a start and its end lie {statistics.median(apart):,.0f} events apart "
        f"(median; p90 {apart[int(0.9 * len(apart))]:,})"
    )


def lineage_columns(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """The lineage table's own columns (generated ones are computed on insert)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            (f'"{schema}".lineage',),
        ).fetchall()
    ]


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


def copy_limit(
    conn: psycopg.Connection[Any], source: str, target: str, rows_per_tx: int
) -> tuple[int, float]:
    """Binary COPY of ``source``'s lineage rows into ``target``'s (indexed, empty) table.

    Rows go in the order they were first started, as a stream brings them, in
    transactions of ``rows_per_tx``. Returns the rows copied and the seconds.
    """
    cols = sql.SQL(", ").join(map(sql.Identifier, lineage_columns(conn, source)))
    with (
        conn.cursor() as cur,
        cur.copy(
            sql.SQL(
                "COPY (SELECT {} FROM {} ORDER BY started_at NULLS LAST) TO STDOUT (FORMAT BINARY)"
            ).format(cols, sql.Identifier(source, "lineage"))
        ) as copy,
    ):
        tuples = split_binary_copy(b"".join(bytes(block) for block in copy))
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(target, "lineage"), cols
    )
    started = time.perf_counter()
    for i in range(0, len(tuples), rows_per_tx):
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy_in) as copy:
            copy.write(BINARY_HEADER + b"".join(tuples[i : i + rows_per_tx]) + BINARY_TRAILER)
    return len(tuples), time.perf_counter() - started
