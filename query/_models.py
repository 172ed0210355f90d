"""The read side's row model: what the CLI prints and the API returns.

Field names here are the JSON field names (``--output json`` and the REST API),
so they are part of the public contract: add fields, never rename them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

try:  # the API's extra: only its OpenAPI document needs to know the JSON key
    from pydantic import Field

    _CLASS_KEY: Any = Field(alias="class")
except ImportError:  # pragma: no cover - CLI-only install
    _CLASS_KEY = None

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class ErrorInfo:
    """The error a failed invocation raised (JSON key ``class`` for ``error_class``)."""

    error_class: Annotated[str, _CLASS_KEY]
    message: str
    traceback: str | None = None


@dataclass(frozen=True, kw_only=True)
class LineageRow:
    """One adapter invocation: one message through one adapter.

    ``children_pending`` counts children not settled yet (for a completed row,
    those announced by its completion but not recorded count too; a failed or
    cancelled row waits only for the children that registered); a row is
    ``settled`` when it ended and none is pending. ``known`` is false for a placeholder: a
    row named by a child or a terminal event before its own start arrived.
    ``metadata`` carries ``input_key`` too when the row has one.
    ``repaired`` says what the recorder or the projector had to change to
    store the row (NUL or lone surrogates replaced, a time clamped, a value
    it could not take...): the start's note (``metadata["factflow.repaired"]``)
    and the terminal event's (kept in the row's error jsonb), or None.
    """

    id: UUID
    execution_id: UUID | None
    root_id: UUID | None
    parent_id: UUID | None
    route_id: str | None
    adapter_name: str | None
    status: str
    input_hash: str | None
    output_hash: str | None
    error: ErrorInfo | None
    cancel_reason: str | None
    started_at: datetime | None
    completed_at: datetime | None
    batch_id: UUID | None
    input_key: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    children_expected: int | None
    children_registered: int
    children_settled: int
    children_pending: int
    descendants_failed: int
    settled: bool
    known: bool
    repaired: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExecutionRow:
    """One pipeline run, with its known rows counted by status.

    ``unsettled`` counts rows not settled yet; the execution is ``settled`` once
    it finished and none is left. ``repaired``: what had to be changed to store
    its start (``metadata["factflow.repaired"]``; its finish's note ends ``error``).
    """

    id: UUID
    pipeline: str | None
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    replay_of: UUID | None
    replay_from_stage: str | None
    error: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    total: int
    completed: int
    failed: int
    cancelled: int
    pending: int
    unsettled: int
    settled: bool
    known: bool
    repaired: str | None = None


@dataclass(frozen=True, kw_only=True)
class StatsRow:
    """Counts of one (route, adapter) pair within an execution."""

    route_id: str
    adapter_name: str
    count: int
    completed: int
    failed: int
    cancelled: int
    pending: int


@dataclass(frozen=True, kw_only=True)
class StatsResult:
    """The per-stage counts of one execution, in the order its stages first ran."""

    execution_id: UUID
    rows: tuple[StatsRow, ...]


@dataclass(frozen=True, kw_only=True)
class Page(Generic[T]):
    """One page of a keyset-paginated listing; ``next_cursor`` is None on the last."""

    rows: tuple[T, ...]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class ChainResult:
    """A row's ancestors (root first) and descendants (breadth first).

    ``nodes`` holds the ancestors, the row itself, then its descendants; the
    walk stops at ``max_nodes`` rows and says so with ``truncated``.
    """

    target: UUID
    nodes: tuple[LineageRow, ...]
    truncated: bool
    max_nodes: int


@dataclass(frozen=True, kw_only=True)
class BatchResult:
    """Every row of one batch and the outcome counts."""

    batch_id: UUID
    rows: tuple[LineageRow, ...]
    completed: int
    failed: int
    cancelled: int
    pending: int


def to_json(value: Any) -> Any:
    """A JSON-ready structure: UUIDs as strings, times as ISO-8601, dataclasses as objects."""
    if isinstance(value, ErrorInfo):
        return {"class": value.error_class, "message": value.message, "traceback": value.traceback}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value
