"""The engine around the adapters: runs a route's stages and records their lineage.

A ``Route`` is an ordered list of named stages; each stage's adapter takes one
message and returns the messages it produced, which flow to the next stage.
For every message a stage receives, the engine

1. stores the input bytes under ``executions/{execution}/{route}/{stage}/{message_id}``,
2. wraps the adapter call in ``recorder.invocation(...)`` with the LineageRef of
   the invocation that produced the message as ``parent`` and the storage key as
   ``input_key``, so one lineage row = one message through one adapter,
3. records each output with ``Invocation.output`` and passes the returned
   LineageRef along with the output message (header ``factflow-lineage``).

An adapter that raises fails its own invocation only (the recorder records the
error and re-raises; the engine counts it and goes on with the other messages);
the execution is recorded as failed at the end when any invocation failed.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from factflow_lineage.errors import ConfigError

from ._storage import InvalidKey, Storage, message_key, validate_key

if TYPE_CHECKING:  # the engine only calls the recorder it is given
    from factflow_lineage.producer import LineageRecorder, LineageRef

# Header carrying the LineageRef (``LineageRef.to_header()``) of the invocation
# that produced a message.
HEADER_LINEAGE = "factflow-lineage"

MetadataValue = None | bool | int | float | str


def new_message_id() -> str:
    """A fresh message id: 32 hex digits, safe as a storage key segment."""
    return uuid.uuid4().hex


@dataclass(frozen=True, kw_only=True)
class Message:
    """One message between stages: bytes, string headers and a message id."""

    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    id: str = field(default_factory=new_message_id)


class Adapter(Protocol):
    """An adapter: one input message in, the messages it produced out."""

    def __call__(self, message: Message, /) -> Iterable[Message]: ...


@dataclass(frozen=True)
class Stage:
    """A named step of a route. The name is the lineage row's ``adapter_name``."""

    name: str
    adapter: Adapter


@dataclass(frozen=True)
class Route:
    """An ordered list of stages; each stage's outputs are the next stage's inputs.

    The last stage is a sink: messages it returned would be children nothing
    ever consumes, leaving its lineage rows pending forever, so the engine fails
    such an invocation instead.
    """

    id: str
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if not names:
            raise ConfigError(f"route {self.id!r} has no stages")
        if len(set(names)) != len(names):
            raise ConfigError(f"route {self.id!r} has two stages of one name: {names}")
        for part in (self.id, *names):
            try:
                validate_key(part)
            except InvalidKey:
                raise ConfigError(
                    f"route/stage name {part!r} must be one storage key segment"
                ) from None
            if "/" in part:
                raise ConfigError(f"route/stage name {part!r} may not contain '/'")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def index(self, stage: str) -> int:
        """The position of ``stage`` in the route; ``ConfigError`` naming the stages if absent."""
        try:
            return self.stage_names.index(stage)
        except ValueError:
            raise ConfigError(
                f"route {self.id!r} has no stage {stage!r}: {', '.join(self.stage_names)}"
            ) from None


@dataclass(frozen=True, kw_only=True)
class Entry:
    """A message entering a route at some stage, with its lineage parent and extra metadata."""

    message: Message
    parent: LineageRef | None = None
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass
class StageCounts:
    """Live counters of one stage: messages queued for it, invocations ended."""

    queued: int = 0
    completed: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        return self.completed + self.failed


Progress = Callable[[Mapping[str, StageCounts]], None]


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a run did: its execution id, and per stage how many invocations ended how."""

    execution_id: uuid.UUID
    route_id: str
    counts: Mapping[str, StageCounts]

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.counts.values())

    @property
    def invocations(self) -> int:
        return sum(c.done for c in self.counts.values())

    @property
    def status(self) -> str:
        return "failed" if self.failed else "completed"


class SinkEmitted(RuntimeError):
    """The last stage of a route returned messages, which no stage would consume."""


class Pipeline:
    """Runs routes through adapters, storing inputs and recording lineage.

    ``recorder`` is the process's ``LineageRecorder`` (fire-and-forget: recording
    never fails the pipeline); ``storage`` keeps every stage's input messages.
    """

    def __init__(self, recorder: LineageRecorder, storage: Storage, *, pipeline: str) -> None:
        self.recorder = recorder
        self.storage = storage
        self.pipeline = pipeline

    def run(
        self,
        route: Route,
        entries: Iterable[Entry | Message],
        *,
        from_stage: str | None = None,
        replay_of: uuid.UUID | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        progress: Progress | None = None,
    ) -> RunResult:
        """Run ``entries`` through ``route`` from ``from_stage`` (default: the first) to the end.

        With ``replay_of``, the execution is recorded as a replay of that
        execution from ``from_stage``.
        """
        start = route.index(from_stage) if from_stage is not None else 0
        counts = {name: StageCounts() for name in route.stage_names}
        queue: deque[tuple[int, Entry]] = deque()
        for item in entries:
            entry = item if isinstance(item, Entry) else Entry(message=item)
            queue.append((start, entry))
            counts[route.stages[start].name].queued += 1
        with self.recorder.execution(
            pipeline=self.pipeline,
            metadata={"route": route.id, **(metadata or {})},
            replay_of=replay_of,
            replay_from_stage=from_stage if replay_of is not None else None,
        ) as execution:
            if progress is not None:
                progress(counts)
            while queue:
                index, entry = queue.popleft()
                self._invoke(execution.id, route, index, entry, queue, counts)
                if progress is not None:
                    progress(counts)
            failed = {n: c.failed for n, c in counts.items() if c.failed}
            if failed:
                execution.fail(_failure_summary(failed, counts))
        return RunResult(execution_id=execution.id, route_id=route.id, counts=counts)

    def _invoke(
        self,
        execution_id: uuid.UUID,
        route: Route,
        index: int,
        entry: Entry,
        queue: deque[tuple[int, Entry]],
        counts: dict[str, StageCounts],
    ) -> None:
        stage = route.stages[index]
        message = entry.message
        key = message_key(str(execution_id), route.id, stage.name, message.id)
        self.storage.put(key, message.data)
        metadata: dict[str, MetadataValue] = {"message_id": message.id, **entry.metadata}
        last = index + 1 == len(route.stages)
        try:
            with self.recorder.invocation(
                execution_id,
                route.id,
                stage.name,
                input=message.data,
                parent=entry.parent,
                input_key=key,
                metadata=metadata,
            ) as invocation:
                # Materialised inside the block: a generator adapter that raises
                # half-way fails this invocation, not a later one.
                outputs = list(stage.adapter(message))
                if last and outputs:
                    raise SinkEmitted(
                        f"{stage.name} is the last stage of route {route.id!r} "
                        f"but returned {len(outputs)} message(s)"
                    )
                refs = [invocation.output(out.data) for out in outputs]
        # The engine's per-message boundary: an adapter may raise anything, the
        # recorder has recorded it as this invocation's failure, and the other
        # messages of the execution must go on.
        except Exception:
            counts[stage.name].failed += 1
            return
        counts[stage.name].completed += 1
        for out, ref in zip(outputs, refs, strict=True):
            queue.append(
                (
                    index + 1,
                    Entry(
                        message=Message(
                            data=out.data,
                            headers={**out.headers, HEADER_LINEAGE: ref.to_header()},
                            id=out.id,
                        ),
                        parent=ref,
                    ),
                )
            )
            counts[route.stages[index + 1].name].queued += 1


def _failure_summary(failed: Mapping[str, int], counts: Mapping[str, StageCounts]) -> str:
    parts = [f"{name}: {n} of {counts[name].done} failed" for name, n in failed.items()]
    return "; ".join(parts)


def stage_counts_line(counts: Mapping[str, StageCounts], stages: Sequence[str]) -> str:
    """``stage done/queued (n failed)`` for each stage: the plain-text progress line."""
    parts = []
    for name in stages:
        c = counts[name]
        failed = f", {c.failed} failed" if c.failed else ""
        parts.append(f"{name} {c.done}/{c.queued}{failed}")
    return "  ".join(parts)
