"""Raw lineage events for tests and benchmarks: builders and realistic generators.

Events are the decoded dicts of the contract (ids as 16 raw bytes, times as
microseconds since the Unix epoch), exactly what the codec's ``decode`` returns
and ``encode`` takes, so the same sets can go through Kafka or straight into
``Projection.apply``.

* ``EventBuilder``: one event per call, with a fresh event id and sequence.
* ``realistic_run``: pipeline executions as they happen (chains with fan-out
  4-8 stages deep, batches, ~2 % failures), in the order of ``occurred_at``;
  ``realistic_stream``: as many runs as make ``n`` events of one stream.
* ``scenarios``: a hypothesis strategy of small adversarial event sets (random
  DAGs, placeholders, conflicting and missing events) for property tests.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

Event = dict[str, Any]

# 2026-01-01T00:00:00Z
T0 = 1_767_225_600_000_000


def uid(rng: random.Random | None = None) -> bytes:
    """A random (version 4) UUID as 16 bytes; reproducible with ``rng``."""
    if rng is None:
        return uuid.uuid4().bytes
    return uuid.UUID(int=rng.getrandbits(128), version=4).bytes


def num_uid(n: int, space: int = 0) -> bytes:
    """A readable deterministic UUID: ``space`` in the first bytes, ``n`` in the last."""
    return uuid.UUID(int=(space << 96) | n).bytes


class EventBuilder:
    """Builds raw events of one producer: fresh event ids, sequence from 0."""

    def __init__(self, rng: random.Random | None = None, producer_id: bytes | None = None) -> None:
        self.rng = rng
        self.producer_id = producer_id or uid(rng)
        self.sequence = 0

    def event(
        self, event_type: str, at: int, payload: dict[str, Any], *, event_id: bytes | None = None
    ) -> Event:
        """One envelope around ``payload``."""
        ev: Event = {
            "event_id": event_id or uid(self.rng),
            "event_type": event_type,
            "occurred_at": at,
            "producer_id": self.producer_id,
            "sequence": self.sequence,
            "payload": payload,
        }
        self.sequence += 1
        return ev

    def started(
        self,
        *,
        lineage_id: bytes,
        execution_id: bytes,
        at: int,
        root_id: bytes | None = None,
        parent_id: bytes | None = None,
        route_id: str = "route",
        adapter_name: str = "adapter",
        input_hash: str | None = None,
        batch_id: bytes | None = None,
        input_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        event_id: bytes | None = None,
    ) -> Event:
        return self.event(
            "INVOCATION_STARTED",
            at,
            {
                "lineage_id": lineage_id,
                "execution_id": execution_id,
                "root_id": root_id if root_id is not None else lineage_id,
                "parent_id": parent_id,
                "route_id": route_id,
                "adapter_name": adapter_name,
                "input_hash": input_hash,
                "batch_id": batch_id,
                "input_key": input_key,
                "metadata": dict(metadata or {}),
            },
            event_id=event_id,
        )

    def completed(
        self,
        *,
        lineage_id: bytes,
        execution_id: bytes,
        at: int,
        children: int = 0,
        output_hash: str | None = None,
        event_id: bytes | None = None,
    ) -> Event:
        return self.event(
            "INVOCATION_COMPLETED",
            at,
            {
                "lineage_id": lineage_id,
                "execution_id": execution_id,
                "output_hash": output_hash,
                "children": children,
            },
            event_id=event_id,
        )

    def failed(
        self,
        *,
        lineage_id: bytes,
        execution_id: bytes,
        at: int,
        children: int = 0,
        error_class: str = "builtins.ValueError",
        error_message: str = "boom",
        traceback: str | None = "Traceback (most recent call last):\n  ...\nValueError: boom",
        event_id: bytes | None = None,
    ) -> Event:
        return self.event(
            "INVOCATION_FAILED",
            at,
            {
                "lineage_id": lineage_id,
                "execution_id": execution_id,
                "error_class": error_class,
                "error_message": error_message,
                "traceback": traceback,
                "children": children,
            },
            event_id=event_id,
        )

    def cancelled(
        self,
        *,
        lineage_id: bytes,
        execution_id: bytes,
        at: int,
        children: int = 0,
        reason: str | None = "shutdown",
        event_id: bytes | None = None,
    ) -> Event:
        return self.event(
            "INVOCATION_CANCELLED",
            at,
            {
                "lineage_id": lineage_id,
                "execution_id": execution_id,
                "reason": reason,
                "children": children,
            },
            event_id=event_id,
        )

    def terminal(self, status: str, **kwargs: Any) -> Event:
        """``completed``, ``failed`` or ``cancelled`` by name."""
        kwargs = dict(kwargs)
        if status == "completed":
            return self.completed(**kwargs)
        if status == "failed":
            return self.failed(**kwargs)
        if status == "cancelled":
            return self.cancelled(**kwargs)
        raise ValueError(status)

    def execution_started(
        self,
        *,
        execution_id: bytes,
        at: int,
        pipeline: str = "pipeline",
        metadata: Mapping[str, Any] | None = None,
        replay_of: bytes | None = None,
        replay_from_stage: str | None = None,
        event_id: bytes | None = None,
    ) -> Event:
        return self.event(
            "EXECUTION_STARTED",
            at,
            {
                "execution_id": execution_id,
                "pipeline": pipeline,
                "metadata": dict(metadata or {}),
                "replay_of": replay_of,
                "replay_from_stage": replay_from_stage,
            },
            event_id=event_id,
        )

    def execution_finished(
        self,
        *,
        execution_id: bytes,
        at: int,
        status: str = "COMPLETED",
        error: str | None = None,
        event_id: bytes | None = None,
    ) -> Event:
        return self.event(
            "EXECUTION_FINISHED",
            at,
            {"execution_id": execution_id, "status": status, "error": error},
            event_id=event_id,
        )


# --- realistic runs -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunShape:
    """The shape of generated pipeline executions.

    Each execution has ``roots`` input messages; each walks ``stages`` (depth
    drawn from ``depth``); the first stage fans out to ``first_fanout``
    children, later ones to ``fanout`` (1 most of the time). ``batch_size``
    siblings of a stage share a batch id when the stage is batched (every
    third stage). ``failure_rate`` of invocations fail (without children),
    ``duration_ms`` is the mean invocation time, ``rate`` the events per
    second the whole run is spread over (which decides how far a start and
    its completion lie apart in the stream).
    """

    executions: int = 4
    roots: int = 50
    depth: tuple[int, int] = (4, 8)
    first_fanout: tuple[int, int] = (5, 30)
    fanout: tuple[int, int] = (1, 2)
    batch_size: int = 10
    failure_rate: float = 0.02
    cancel_rate: float = 0.002
    duration_ms: float = 200.0
    rate: float = 50_000.0


_STAGES = (
    ("sitemap_scraper", "sitemap_parser"),
    ("sitemap_scraper", "url_expander"),
    ("sitemap_scraper", "web_scraper"),
    ("sitemap_scraper", "web_content_storage"),
    ("enrich", "language_detector"),
    ("enrich", "chunker"),
    ("embed", "embedding_generator"),
    ("embed", "vector_storage"),
    ("index", "indexer"),
    ("index", "publisher"),
)


def realistic_run(rng: random.Random, shape: RunShape = RunShape(), *, at: int = T0) -> list[Event]:
    """Events of ``shape.executions`` pipeline executions from ``at``, sorted by ``occurred_at``."""
    b = EventBuilder(rng)
    out: list[Event] = []
    # Spread the executions over the time the run takes at the given rate.
    est_rows = shape.executions * shape.roots * sum(shape.first_fanout) / 2 * sum(shape.depth) / 2
    window = int(est_rows * 2 / shape.rate * 1_000_000)
    mean = shape.duration_ms * 1000
    for _ in range(shape.executions):
        xid = uid(rng)
        x_at = at + rng.randrange(max(window // 2, 1))
        out.append(b.execution_started(execution_id=xid, at=x_at, pipeline="web_ingest"))
        last = x_at
        depth = rng.randint(*shape.depth)
        for _ in range(shape.roots):
            root = uid(rng)
            at = x_at + rng.randrange(max(window // 2, 1))
            # (lineage id, parent id, stage, start time, batch id)
            todo: list[tuple[bytes, bytes | None, int, int, bytes | None]] = [
                (root, None, 0, at, None)
            ]
            while todo:
                lid, parent, stage, start, batch = todo.pop()
                route, adapter = _STAGES[stage % len(_STAGES)]
                out.append(
                    b.started(
                        lineage_id=lid,
                        execution_id=xid,
                        root_id=root,
                        parent_id=parent,
                        route_id=route,
                        adapter_name=adapter,
                        at=start,
                        input_hash=f"sha256:{rng.getrandbits(64):016x}",
                        batch_id=batch,
                        input_key=f"s3://ingest/{rng.getrandbits(40):010x}.html"
                        if stage == 0
                        else None,
                        metadata={"attempt": 1, "worker": f"w{rng.randrange(8)}"},
                    )
                )
                duration = int(rng.expovariate(1 / mean)) + 1
                end = start + duration
                last = max(last, end)
                roll = rng.random()
                if roll < shape.failure_rate:
                    out.append(
                        b.failed(
                            lineage_id=lid,
                            execution_id=xid,
                            at=end,
                            error_message=f"HTTP 5{rng.randrange(10):02d}",
                        )
                    )
                    continue
                if roll < shape.failure_rate + shape.cancel_rate:
                    out.append(b.cancelled(lineage_id=lid, execution_id=xid, at=end))
                    continue
                n = 0
                if stage + 1 < depth:
                    n = rng.randint(*(shape.first_fanout if stage == 0 else shape.fanout))
                batched = (stage + 1) % 3 == 0
                child_batch = None
                for i in range(n):
                    if batched and i % shape.batch_size == 0:
                        child_batch = uid(rng)
                    child_start = start + (duration * (i + 1)) // (n + 1)
                    todo.append(
                        (uid(rng), lid, stage + 1, child_start, child_batch if batched else None)
                    )
                out.append(
                    b.completed(
                        lineage_id=lid,
                        execution_id=xid,
                        at=end,
                        children=n,
                        output_hash=f"sha256:{rng.getrandbits(64):016x}",
                    )
                )
        out.append(b.execution_finished(execution_id=xid, at=last + 1000, status="COMPLETED"))
    out.sort(key=lambda e: (e["occurred_at"], e["sequence"]))
    return out


def realistic_stream(rng: random.Random, n: int, shape: RunShape = RunShape()) -> list[Event]:
    """``n`` events of back-to-back ``realistic_run``s as one stream at ``shape.rate`` events/s.

    Each run starts when the stream has carried the previous run's events at
    the shape's rate, so runs overlap as a busy pipeline's executions do, and a
    start and its completion lie as far apart in the stream as the invocation
    takes at that rate (``duration_ms * rate / 1000`` events on average). Runs
    all started at the same instant would compress time instead: the stream
    would run at many times ``shape.rate`` with the same invocation times, and
    a start and its completion would lie hundreds of thousands of events apart.
    """
    events: list[Event] = []
    at = T0
    while len(events) < n:
        run = realistic_run(rng, shape, at=at)
        events += run
        at += int(len(run) / shape.rate * 1_000_000)
    events.sort(key=lambda e: (e["occurred_at"], e["sequence"]))
    return events[:n]


def batches(events: list[Event], size: int) -> Iterator[list[Event]]:
    """Consecutive slices of ``size`` events, as a consumer polls them."""
    for i in range(0, len(events), size):
        yield events[i : i + size]


# --- adversarial scenarios (hypothesis) ----------------------------------------------

# Hostile values (NUL, long names, NaN, times and counts out of range) are
# repaired by the projector and the reference model alike (factflow_lineage._repair).
# No lone surrogates: no decoded event holds one (the codec decodes strict UTF-8).
_ROUTES = (
    ("fetch", "web_scraper"),
    ("fetch", "sitemap_parser"),
    ("store", "writer"),
    ("fetch\x00", "web_scraper"),
    ("r" * 1100, "é" * 300),
)
_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=6,
)
_HOSTILE_TEXT = st.one_of(_TEXT, st.text(alphabet="a\x00\ufffd", min_size=1, max_size=4))
# Texts that may end with the note line the recorder appends (factflow.repaired).
_NOTED_TEXT = st.sampled_from(
    [None, "tb", "tb\x00", "tb\n[factflow.repaired: error_message: x]", "[factflow.repaired: y]"]
)
# Out-of-range times, drawn now and then instead of a tick: they clamp to years 1-9999.
_FAR = (253_402_300_799_999_999 + 1, 253_402_300_799_999_999 + 2, -62_135_596_800_000_000 - 1)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    # jsonb keeps numbers as decimals: beyond 1e15 a float's shortest repr is
    # not its exact value, and it would come back as a different number.
    st.floats(min_value=-1e15, max_value=1e15),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    _HOSTILE_TEXT,
)
_METADATA = st.dictionaries(
    st.sampled_from(["a", "b", "input_key", "é", "k\x00", "k\ufffd", "factflow.repaired"]),
    _SCALARS,
    max_size=3,
)
_TERMINALS = ("completed",) * 5 + ("failed", "cancelled", None, None)


@st.composite
def scenarios(draw: st.DrawFn, max_rows: int = 16) -> list[Event]:
    """A small, adversarial set of distinct events over a random DAG.

    Chains with fan-out, parents whose start never arrives (placeholders),
    terminal events without a start, conflicting second starts (another
    parent, route or execution; some naming a later row: parent cycles) and
    terminal events (another status or child count), children announced but
    never started, shared batch ids,
    failures, cancellations, execution events (some missing, some twice),
    an event of a type the reader does not know, and many equal timestamps
    (so that ties are broken by event id).
    """
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    b = EventBuilder(rng)
    tick = st.integers(0, 15).map(lambda t: T0 + t * 1000 if t <= 12 else _FAR[t - 13])
    execs = [num_uid(i + 1, 0xE) for i in range(draw(st.integers(1, 3)))]
    batch_ids = [None, None, num_uid(1, 0xB), num_uid(2, 0xB)]
    n = draw(st.integers(1, max_rows))
    ids = [num_uid(i + 1, 0xA) for i in range(n)]
    parents: list[int | None] = []
    roots: list[int] = []
    for i in range(n):
        p = draw(st.integers(0, i))
        parents.append(None if p == i else p)
        roots.append(i if p == i else roots[p])
    events: list[Event] = []

    def start(i: int, parent: int | None) -> Event:
        route, adapter = draw(st.sampled_from(_ROUTES))
        other_exec = draw(st.integers(0, 9)) == 0
        return b.started(
            lineage_id=ids[i],
            execution_id=draw(st.sampled_from(execs))
            if other_exec
            else execs[roots[i] % len(execs)],
            root_id=ids[roots[i]],
            parent_id=None if parent is None else ids[parent],
            route_id=route,
            adapter_name=adapter,
            at=draw(tick),
            input_hash=draw(st.sampled_from([None, "h1", "h2", "h\x00"])),
            batch_id=draw(st.sampled_from(batch_ids)),
            input_key=draw(st.sampled_from([None, "s3://in/1", "k", "k\x00"])),
            metadata=draw(_METADATA),
        )

    announced = [sum(1 for p in parents if p == i) for i in range(n)]
    for i in range(n):
        if draw(st.integers(0, 9)) > 0:
            events.append(start(i, parents[i]))
        if draw(st.integers(0, 9)) == 0:
            # A conflicting start: another event id, time, maybe another parent
            # (always an earlier row, so the links stay acyclic).
            events.append(
                start(i, draw(st.one_of(st.none(), st.integers(0, max(i - 1, 0)))) if i else None)
            )
        if draw(st.integers(0, 11)) == 0:
            # A start naming any other row, a later one too: the links may form
            # a cycle (a hostile producer), which the projection breaks.
            other = draw(st.integers(0, n - 1))
            if other != i:
                events.append(start(i, other))
        for extra in range(2):
            status = draw(st.sampled_from(_TERMINALS))
            if status is None or (extra and draw(st.integers(0, 5)) > 0):
                continue
            delta = draw(st.sampled_from([0, 0, 0, 0, 1, -1, 2, -(2**31), 2**31]))
            # Beyond int4 either way now and then: clamped to a count.
            children = delta if abs(delta) == 2**31 else max(0, announced[i] + delta)
            texts: dict[str, Any] = {}
            if status == "failed":
                texts = {"error_message": draw(_HOSTILE_TEXT), "traceback": draw(_NOTED_TEXT)}
            elif status == "cancelled":
                texts = {"reason": draw(_NOTED_TEXT)}
            else:
                texts = {"output_hash": draw(st.sampled_from([None, "o", "o\x00"]))}
            events.append(
                b.terminal(
                    status,
                    lineage_id=ids[i],
                    execution_id=execs[roots[i] % len(execs)],
                    at=draw(tick),
                    children=children,
                    **texts,
                )
            )
    for x in execs:
        for extra in range(2):
            if draw(st.integers(0, 9)) < (8 if not extra else 1):
                events.append(
                    b.execution_started(
                        execution_id=x,
                        at=draw(tick),
                        pipeline=draw(st.sampled_from(["ingest", "replay", "p\x00"])),
                        metadata=draw(_METADATA),
                        replay_of=draw(st.sampled_from([None, execs[0]])),
                        replay_from_stage=draw(st.sampled_from([None, "fetch", "f\x00"])),
                    )
                )
            if draw(st.integers(0, 9)) < (6 if not extra else 2):
                events.append(
                    b.execution_finished(
                        execution_id=x,
                        at=draw(tick),
                        status=draw(st.sampled_from(["COMPLETED", "FAILED", "CANCELLED"])),
                        error=draw(st.sampled_from([None, "stage fetch failed", "e\x00"])),
                    )
                )
    if draw(st.integers(0, 19)) == 0:
        events.append(b.event("UNKNOWN", T0, {}))
    return events
