"""What the lineage recorder costs, beside what it cannot beat, measured in one run.

    .venv/bin/python benchmarks/producer.py            # against FACTFLOW_KAFKA_BOOTSTRAP

1. Caller-side cost of one invocation (``with recorder.invocation(...)``: the
   started and the completed event), median and p99, beside the *limit*: fastavro
   encoding the same two events plus ``Producer.produce()`` of the bytes, with the
   same producer settings. Goal: median within 1.5x of the limit, p99 < 100 us.
2. Sustained throughput from one process, counted at the broker (events whose
   delivery Kafka acknowledged), with the spool off and on. Goal: >= 100,000/s.

Both use a fresh topic (deleted afterwards). Not a test: it prints one run's
figures; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from factflow_lineage.config import Settings
from factflow_lineage.producer import LineageRecorder, RecorderConfig, content_hash
from factflow_lineage.producer._config import producer_settings
from factflow_lineage.provisioning import KAFKA_LOGGER
from factflow_lineage.schemas import CURRENT_VERSION, fingerprint, writer_schema

NS = 1_000_000_000


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] / 1000


def invocation_cost(config: RecorderConfig, rounds: int, per_round: int) -> list[int]:
    """ns per ``with recorder.invocation(...)`` (start + complete), one sample each."""
    samples: list[int] = []
    with LineageRecorder(config) as recorder:
        run = recorder.execution(pipeline="bench")
        execution = run.id
        data = b"x" * 200
        clock = time.perf_counter_ns
        for _ in range(rounds):
            gc.collect()
            for _ in range(per_round):
                start = clock()
                with recorder.invocation(
                    execution, "route", "adapter", input=data, input_key="k"
                ) as inv:
                    pass
                samples.append(clock() - start)
            # Between rounds, let librdkafka's queue drain, so that every round
            # measures the steady state, not a queue that fills up.
            recorder.flush(30)
        run.complete()
        left = recorder.flush(60)
        stats = recorder.stats()
    assert left == 0 and stats.delivered == stats.emitted, stats
    del inv
    return samples


def limit_cost(config: RecorderConfig, rounds: int, per_round: int) -> list[int]:
    """ns per fastavro-encode of the same two events + produce() of their bytes."""
    schema = fastavro.parse_schema(writer_schema(CURRENT_VERSION))
    header = b"\xc3\x01" + fingerprint(CURRENT_VERSION)
    producer = Producer(producer_settings(config, client_id="bench-limit", logger=KAFKA_LOGGER))
    topic = config.topic
    execution = uuid.uuid4().bytes
    producer_id = uuid.uuid4().bytes
    input_hash = content_hash(b"x" * 200)
    ns = "io.factflow.lineage."

    def pair(seq: int) -> tuple[dict[str, Any], dict[str, Any], bytes]:
        lineage = uuid.uuid4().bytes
        now = time.time_ns() // 1000
        started = {
            "event_id": uuid.uuid4().bytes,
            "event_type": "INVOCATION_STARTED",
            "occurred_at": now,
            "producer_id": producer_id,
            "sequence": seq,
            "payload": (
                ns + "InvocationStarted",
                {
                    "lineage_id": lineage,
                    "execution_id": execution,
                    "root_id": lineage,
                    "parent_id": None,
                    "route_id": "route",
                    "adapter_name": "adapter",
                    "input_hash": input_hash,
                    "batch_id": None,
                    "input_key": "k",
                    "metadata": {},
                },
            ),
        }
        completed = {
            "event_id": uuid.uuid4().bytes,
            "event_type": "INVOCATION_COMPLETED",
            "occurred_at": now,
            "producer_id": producer_id,
            "sequence": seq + 1,
            "payload": (
                ns + "InvocationCompleted",
                {
                    "lineage_id": lineage,
                    "execution_id": execution,
                    "output_hash": None,
                    "children": 0,
                },
            ),
        }
        return started, completed, lineage

    def encode(event: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, schema, event)
        return out.getvalue()

    def delivered(err: Any, msg: Any) -> None:
        pass

    samples: list[int] = []
    clock = time.perf_counter_ns
    seq = 0
    for _ in range(rounds):
        # The events are built beforehand: the limit is encoding and producing only.
        pairs = [pair(seq + 2 * i) for i in range(per_round)]
        seq += 2 * per_round
        gc.collect()
        for started, completed, key in pairs:
            start = clock()
            producer.produce(topic, encode(started), key, on_delivery=delivered)
            producer.produce(topic, encode(completed), key, on_delivery=delivered)
            samples.append(clock() - start)
        producer.flush(30)
    producer.flush(60)
    return samples


def throughput(config: RecorderConfig, seconds: float) -> tuple[float, float, Any]:
    """Events/s emitted by one thread for ``seconds``, and acknowledged by Kafka
    (all of them, from the first call to the last acknowledgement)."""
    with LineageRecorder(config) as recorder:
        execution = recorder.execution(pipeline="bench").id
        data = b"x" * 200
        start = time.perf_counter()
        stop = start + seconds
        n = 0
        while True:
            for _ in range(1000):
                with recorder.invocation(execution, "route", "adapter", input=data):
                    pass
            n += 1000
            if time.perf_counter() >= stop:
                break
        emitted_in = time.perf_counter() - start
        left = recorder.flush(300)
        acked_in = time.perf_counter() - start
        stats = recorder.stats()
    assert left == 0, stats
    events = 2 * n + 1
    return events / emitted_in, stats.delivered / acked_in, stats


def raw_throughput(config: RecorderConfig, seconds: float) -> float:
    """librdkafka alone: the same ~230-byte values, pre-encoded, acknowledged per second."""
    producer = Producer(producer_settings(config, client_id="bench-raw", logger=KAFKA_LOGGER))
    value = os.urandom(230)
    keys = [uuid.uuid4().bytes for _ in range(1000)]
    acked = 0

    def delivered(err: Any, msg: Any) -> None:
        nonlocal acked
        if err is None:
            acked += 1

    start = time.perf_counter()
    stop = start + seconds
    while time.perf_counter() < stop:
        for key in keys:
            while True:
                try:
                    producer.produce(config.topic, value, key, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.001)
        producer.poll(0)
    producer.flush(300)
    return acked / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=Settings.from_env().kafka.bootstrap)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    topic = f"bench.producer.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap, "logger": KAFKA_LOGGER})
    admin.create_topics([NewTopic(topic, num_partitions=args.partitions)])[topic].result(30)
    spool_root = Path(tempfile.mkdtemp(prefix="factflow-bench-spool-"))
    spool_on = RecorderConfig(bootstrap=args.bootstrap, topic=topic, spool_dir=spool_root)
    spool_off = RecorderConfig(bootstrap=args.bootstrap, topic=topic, spool_dir=None)
    try:
        print(
            f"factflow-lineage producer benchmark: Kafka {args.bootstrap}, topic {topic}, "
            f"{args.partitions} partitions, Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPUs"
        )
        print(
            f"\n1. caller-side cost of one invocation (2 events), "
            f"{args.rounds} x {args.per_round} samples, microseconds"
        )
        limit = sorted(limit_cost(spool_off, args.rounds, args.per_round))
        rows = [("limit: fastavro encode x2 + produce() x2", limit)]
        for name, config in (("recorder, spool off", spool_off), ("recorder, spool on", spool_on)):
            rows.append((name, sorted(invocation_cost(config, args.rounds, args.per_round))))
        base = statistics.median(limit)
        print(f"   {'':44s} {'median':>8s} {'p99':>8s} {'p99.9':>8s} {'median/limit':>13s}")
        for name, samples in rows:
            median = statistics.median(samples)
            print(
                f"   {name:44s} {median / 1000:8.2f} {percentile(samples, 0.99):8.2f} "
                f"{percentile(samples, 0.999):8.2f} {median / base:12.2f}x"
            )

        print(f"\n2. sustained throughput from one process, {args.seconds:g} s, events/s")
        raw = raw_throughput(spool_off, args.seconds)
        print(f"   {'librdkafka alone (pre-encoded bytes)':44s} acknowledged {raw:10,.0f}")
        results = {}
        # Without a spool a full queue drops events; here the caller waits for
        # room instead (block_timeout), so that we measure what gets through.
        blocking = dataclasses.replace(spool_off, block_timeout=1.0)
        for name, config in (("recorder, spool off", blocking), ("recorder, spool on", spool_on)):
            emitted, acked, stats = throughput(config, args.seconds)
            results[name] = acked
            print(
                f"   {name:44s} acknowledged {acked:10,.0f}   (callers emitted "
                f"{emitted:,.0f}/s; {stats.delivered:,} events, {stats.dropped} dropped)"
            )
        off, on = results["recorder, spool off"], results["recorder, spool on"]
        print(
            f"\n   spool on / spool off: {on / off:.2f}x; recorder / librdkafka alone: "
            f"{off / raw:.2f}x (spool off)"
        )
    finally:
        for future in admin.delete_topics([topic], operation_timeout=30).values():
            future.result(60)
        for leftover in spool_root.iterdir():
            print(f"warning: spool directory left behind: {leftover}", file=sys.stderr)
        if not any(spool_root.iterdir()):
            spool_root.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
