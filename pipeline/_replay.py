"""Execution replay: run a stage (and everything downstream) again on its stored inputs.

``plan_replay`` decides what to re-publish. It reads the lineage projection's
rows of the stage in the original execution (each names its stored input in
``input_key``), keeps those whose message did not get through (the row failed,
was cancelled, is still pending, or a descendant failed) unless ``everything``
is asked for, and checks that storage still holds every one of their inputs:
a replay that silently skipped a message would look like a fix that worked.

``replay`` then runs those inputs through the route from that stage under a NEW
execution, recorded with ``replay_of`` and ``replay_from_stage``. Upstream stages
do not run.

Lineage linkage: a replayed invocation is a new chain root (no parent). The
original rows stay exactly as they were: attaching the replayed rows under the
original parent would register children that parent never emitted, so its
pending-children count (and every chain query built on it) would change after
the fact. The way back is recorded instead: the execution's ``replay_of``, and
in each replayed first-stage row's metadata ``replayed_from`` (the original
lineage id, whose chain reaches the original root), ``replayed_root`` and
``replayed_input_key`` (the original stored input). The replayed input is stored
again under the new execution, with the original message id, so the new
execution is self-contained (it can be replayed in turn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from factflow_lineage import query as q
from factflow_lineage.errors import NotFound
from factflow_lineage.query import LineageRow

from ._engine import Entry, Message, Pipeline, Progress, Route, RunResult
from ._storage import Storage, stage_prefix

# Rows fetched per page while collecting a stage's rows (the query side's maximum).
_PAGE = 1000


class InputsMissing(NotFound):
    """Storage no longer holds some inputs a replay needs; ``missing`` lists their keys."""

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


@dataclass(frozen=True, kw_only=True)
class ReplayInput:
    """One stored input to re-publish, and the original row that consumed it."""

    key: str
    message_id: str
    lineage_id: UUID
    root_id: UUID | None
    status: str


@dataclass(frozen=True, kw_only=True)
class ReplayPlan:
    """What a replay will re-publish, into which route, from which stage."""

    execution_id: UUID
    pipeline: str
    source_route: str
    target_route: str
    stage: str
    inputs: tuple[ReplayInput, ...]
    # Stored inputs of the stage that the projection has no row for: the
    # projector is behind, or the lineage of those messages was lost.
    unprojected: tuple[str, ...]
    # Rows of the stage, and how many of them got through and were left out.
    rows: int
    skipped_completed: int


def needs_replay(row: LineageRow) -> bool:
    """Whether a row's message did not get through: it or a descendant did not complete."""
    return row.status != "completed" or row.descendants_failed > 0 or not row.settled


def _stage_rows(conn: Any, execution_id: UUID, stage: str) -> list[LineageRow]:
    rows: list[LineageRow] = []
    cursor: str | None = None
    while True:
        page = q.list_lineage(
            conn, execution=execution_id, adapter=stage, limit=_PAGE, cursor=cursor
        )
        rows.extend(page.rows)
        if page.next_cursor is None:
            return rows
        cursor = page.next_cursor


def plan_replay(
    conn: Any,
    storage: Storage,
    execution: str | UUID,
    stage: str,
    *,
    routes: Mapping[str, Route],
    to_route: str | None = None,
    everything: bool = False,
) -> ReplayPlan:
    """Decide what replaying ``stage`` of ``execution`` re-publishes; check storage has it.

    ``conn`` reads the lineage projection (the query side's connection).
    Raises ``NotFound`` for an unknown execution or a stage with no rows or
    nothing to replay, ``InputsMissing`` listing every key storage lost, and
    ``ConfigError`` when the target route has no such stage.
    """
    original = q.get_execution(conn, execution)
    rows = _stage_rows(conn, original.id, stage)
    if not rows:
        ran = sorted({s.adapter_name for s in q.stats(conn, original.id).rows})
        raise NotFound(
            f"execution {original.id} has no lineage rows of stage {stage!r}"
            + (f" (its stages: {', '.join(ran)})" if ran else "")
        )
    source_routes = sorted({r.route_id for r in rows if r.route_id})
    if len(source_routes) != 1:
        raise NotFound(
            f"stage {stage!r} of execution {original.id} ran in routes "
            f"{', '.join(source_routes) or '(none recorded)'}: cannot tell which to replay"
        )
    source_route = source_routes[0]
    target_name = to_route or source_route
    target = routes.get(target_name)
    if target is None:
        raise NotFound(
            f"no route {target_name!r} in pipeline {original.pipeline!r} "
            f"(known: {', '.join(sorted(routes)) or 'none'})"
        )
    target.index(stage)  # ConfigError naming the route's stages if it lacks this one

    chosen = rows if everything else [r for r in rows if needs_replay(r)]
    if not chosen:
        raise NotFound(
            f"nothing to replay: all {len(rows)} {stage} invocations of execution "
            f"{original.id} completed, and so did everything downstream of them "
            "(--all replays them anyway)"
        )
    prefix = stage_prefix(str(original.id), source_route, stage)
    stored = set(storage.list(prefix))
    missing: list[str] = []
    inputs: list[ReplayInput] = []
    for row in chosen:
        key = row.input_key
        if key is None:
            missing.append(f"(no input_key recorded for lineage row {row.id})")
        elif key not in stored:
            missing.append(key)
        else:
            inputs.append(
                ReplayInput(
                    key=key,
                    message_id=key.rsplit("/", 1)[-1],
                    lineage_id=row.id,
                    root_id=row.root_id,
                    status=row.status,
                )
            )
    if missing:
        listed = "\n  ".join(missing)
        raise InputsMissing(
            f"cannot replay stage {stage!r} of execution {original.id}: storage {storage!r} "
            f"no longer has {len(missing)} of the {len(chosen)} inputs to re-publish:\n  {listed}",
            missing,
        )
    projected = {r.input_key for r in rows}
    return ReplayPlan(
        execution_id=original.id,
        pipeline=original.pipeline or "",
        source_route=source_route,
        target_route=target.id,
        stage=stage,
        inputs=tuple(inputs),
        unprojected=tuple(sorted(stored - projected)),
        rows=len(rows),
        skipped_completed=len(rows) - len(chosen),
    )


def replay(
    pipeline: Pipeline,
    plan: ReplayPlan,
    routes: Mapping[str, Route],
    *,
    progress: Progress | None = None,
) -> RunResult:
    """Run ``plan``'s stored inputs through its target route from its stage, as a new execution."""
    entries = [
        Entry(
            message=Message(data=pipeline.storage.get(item.key), id=item.message_id),
            metadata={
                "replayed_from": str(item.lineage_id),
                "replayed_root": None if item.root_id is None else str(item.root_id),
                "replayed_input_key": item.key,
            },
        )
        for item in plan.inputs
    ]
    return pipeline.run(
        routes[plan.target_route],
        entries,
        from_stage=plan.stage,
        replay_of=plan.execution_id,
        metadata={"replay_inputs": len(entries)},
        progress=progress,
    )
