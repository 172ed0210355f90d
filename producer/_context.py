"""Execution, Invocation and Batch: the context managers adapters hold.

Each public method is the recorder's outer boundary: it catches Exception (the
one place our style allows it), counts it, logs it rate-limited and returns, so
that a lineage problem never fails the pipeline. The user's own exceptions are
never caught: ``__exit__`` records them and lets them propagate unchanged.
"""

from __future__ import annotations

import uuid
from asyncio import CancelledError
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, overload

from factflow_lineage._repair import Notes, truncate
from factflow_lineage.schemas import EventType, ExecutionStatus

from ._events import error_class, format_traceback, safe_str, valid_text
from ._hashing import OutputHasher, content_hash
from ._ids import new_time_id, parse_id, unprintable_id
from ._open import EXECUTION, INVOCATION, OpenTable, Slot
from ._ref import LineageRef, parse_parent

if TYPE_CHECKING:
    from ._recorder import LineageRecorder

_STARTED: Final = EventType.INVOCATION_STARTED.value
_COMPLETED: Final = EventType.INVOCATION_COMPLETED.value
_FAILED: Final = EventType.INVOCATION_FAILED.value
_CANCELLED: Final = EventType.INVOCATION_CANCELLED.value
_EXECUTION_STARTED: Final = EventType.EXECUTION_STARTED.value
_EXECUTION_FINISHED: Final = EventType.EXECUTION_FINISHED.value
_NIL: Final = bytes(16)
_NO_METADATA: Final[dict[str, Any]] = {}
# Interruptions rather than failures: the work was stopped, not broken.
_CANCELLATIONS: Final = (CancelledError, KeyboardInterrupt, GeneratorExit)

_RUNNING: Final = 1
_ENDED: Final = 2


def _text(value: object) -> str:
    return value if isinstance(value, str) else valid_text(value)


def _noted(notes: Notes | None, field: str, what: str) -> Notes:
    """``notes`` (made on the first problem: the common path makes none) plus one."""
    if notes is None:
        notes = Notes()
    notes.add(field, what)
    return notes


def _why(error: BaseException) -> str:
    """An exception as a note names it: its class and the head of its message."""
    return f"{type(error).__name__}: {truncate(safe_str(error), 200)}"


def _unreadable_id(error: BaseException, derived: bytes) -> str:
    return (
        f"could not be read ({type(error).__name__}); filed under "
        f"{uuid.UUID(bytes=derived)}, the UUIDv5 of its type's name"
    )


class Invocation:
    """One adapter invocation: a lineage row, started when it was created.

    Use it as a context manager: a normal exit records *completed* (with the
    output hash and the number of outputs), an exception records *failed* (class,
    message and traceback, bounded) and propagates unchanged. Or end it yourself
    with ``complete()``, ``fail(exc)`` or ``cancel(reason)``; the first ending wins.
    """

    __slots__ = (
        "_children",
        "_exec",
        "_hasher",
        "_id",
        "_rec",
        "_ref",
        "_root",
        "_slot",
        "_state",
        "_table",
    )

    def __init__(
        self,
        recorder: LineageRecorder,
        execution_id: Any,
        route_id: Any,
        adapter_name: Any,
        input: Any,
        parent: Any,
        batch_id: Any,
        metadata: Any,
        input_key: Any,
        input_hash: Any,
        batch_bytes: bytes | None = None,
        notes: Notes | None = None,
    ) -> None:
        lineage = new_time_id()
        self._rec = recorder
        self._id = lineage
        self._root = lineage
        self._exec = _NIL
        self._children = 0
        self._hasher: OutputHasher | None = None
        self._ref: LineageRef | None = None
        self._state = _RUNNING
        self._table: OpenTable | None = None  # where it is open, for crash closing
        self._slot: Slot | None = None
        # Whatever the caller passed, the start is emitted with every field
        # that could be taken; what could not is noted on the row (``notes``,
        # made only then) and counted in ``repaired``, never a reason to drop it.
        try:
            if type(execution_id) is Execution:  # the common case, without a UUID object
                execution, coerced = execution_id._id, False
            else:
                try:
                    execution, coerced = parse_id(execution_id)
                except Exception as e:  # a user's object whose __str__ (or .id) raises
                    execution, coerced = unprintable_id(execution_id), False
                    notes = _noted(notes, "execution_id", _unreadable_id(e, execution))
            if coerced:
                recorder._log.warning(
                    "id",
                    "lineage: execution id %r is not a UUID; recorded as a UUIDv5 of it",
                    execution_id,
                )
            self._exec = execution
            parent_id = None
            if parent is not None:
                try:
                    parsed = parse_parent(parent)
                except Exception as e:  # ValueError, TypeError, or a user's object raising
                    notes = _noted(
                        notes, "parent", f"not a parent ({_why(e)}); recorded as a chain root"
                    )
                    parsed = None
                if parsed is not None:
                    parent_id, self._root = parsed
            if input_hash is None and input is not None:
                try:
                    input_hash = content_hash(input)
                except Exception as e:  # TypeError, or a user's mapping raising inside
                    recorder._hash_failed("input", e)
                    notes = _noted(
                        notes, "input_hash", f"the input could not be hashed ({_why(e)})"
                    )
            if batch_bytes is None and batch_id is not None:
                try:
                    batch_bytes = parse_id(batch_id)[0]
                except Exception as e:
                    batch_bytes = unprintable_id(batch_id)
                    notes = _noted(notes, "batch_id", f"could not be read ({type(e).__name__})")
            payload = {
                "lineage_id": lineage,
                "execution_id": execution,
                "root_id": self._root,
                "parent_id": parent_id,
                "route_id": route_id if type(route_id) is str else _text(route_id),
                "adapter_name": adapter_name if type(adapter_name) is str else _text(adapter_name),
                "input_hash": input_hash,
                "batch_id": batch_bytes,
                "input_key": input_key,
                "metadata": _NO_METADATA if metadata is None else metadata,
            }
            if notes is not None:
                payload = recorder._fit(_STARTED, payload, notes)
            self._table, self._slot = recorder._emit_begin(
                INVOCATION, lineage, self._root, execution, _STARTED, payload
            )
        except Exception as e:
            recorder._internal_error("invocation", e)

    @property
    def id(self) -> uuid.UUID:
        """The lineage id of this invocation (its row)."""
        return uuid.UUID(bytes=self._id)

    @property
    def root_id(self) -> uuid.UUID:
        """The lineage id of the first invocation of this chain."""
        return uuid.UUID(bytes=self._root)

    @property
    def execution_id(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._exec)

    @property
    def ref(self) -> LineageRef:
        """This invocation as a parent: what ``output()`` returns."""
        ref = self._ref
        if ref is None:
            ref = self._ref = LineageRef._of(self._id, self._root)
        return ref

    @property
    def children(self) -> int:
        """How many outputs were recorded so far."""
        return self._children

    def output(self, data: Any = None, *, content_hash: str | None = None) -> LineageRef:
        """Record one output message; returns the ``LineageRef`` the invocation
        that consumes it passes as ``parent=``.

        ``data`` (bytes, str, dict or list) is hashed into the output hash; pass
        ``content_hash`` instead if you already have it, or neither to only count
        the output. The completion event carries the number of outputs.
        """
        try:
            if self._state != _RUNNING:
                self._rec._log.warning(
                    "late-output",
                    "lineage: output() after invocation %s ended; not counted",
                    self.id,
                )
                return self.ref
            # Counted first: whatever hashing does, the output was recorded.
            self._children += 1
            if content_hash is None and data is not None:
                try:
                    content_hash = _content_hash(data)
                except Exception as e:  # TypeError, or a user's mapping raising inside
                    self._rec._hash_failed("output", e)
            if content_hash is not None:
                hasher = self._hasher
                if hasher is None:
                    hasher = self._hasher = OutputHasher()
                hasher.add(content_hash if type(content_hash) is str else safe_str(content_hash))
        except Exception as e:
            self._rec._internal_error("output", e)
        return self.ref

    def complete(self) -> None:
        """Record that the invocation succeeded (no-op if it already ended)."""
        hasher = self._hasher
        self._finish(
            "complete",
            _COMPLETED,
            lambda: {"output_hash": None if hasher is None else hasher.hexdigest()},
        )

    def fail(self, error: BaseException | str) -> None:
        """Record that the invocation failed with ``error`` (no-op if it already ended)."""
        self._finish("fail", _FAILED, lambda: self._failure(error))

    def cancel(self, reason: str | None = None) -> None:
        """Record that the invocation was cancelled (no-op if it already ended)."""
        self._finish(
            "cancel", _CANCELLED, lambda: {"reason": None if reason is None else _text(reason)}
        )

    def _finish(self, action: str, event_type: str, fields: Callable[[], dict[str, Any]]) -> None:
        """Emit the invocation's one terminal event; any later end is a no-op.

        ``fields`` is called inside the boundary: formatting a user's error or
        hashing may itself fail, and that must not reach the pipeline either.
        """
        if self._state != _RUNNING:
            return
        self._state = _ENDED
        try:
            payload = {"lineage_id": self._id, "execution_id": self._exec, **fields()}
            payload["children"] = self._children
            self._rec._emit_end(self._table, self._slot, self._id, event_type, self._root, payload)
        except Exception as e:
            self._rec._internal_error(action, e)

    def _failure(self, error: BaseException | str) -> dict[str, Any]:
        config = self._rec.config
        if isinstance(error, BaseException):
            kind = error_class(error)
            message = safe_str(error)
            trace: str | None = truncate(format_traceback(error), config.traceback_max_bytes)
        else:
            kind, message, trace = "Error", safe_str(error), None
        return {
            "error_class": kind,
            "error_message": truncate(message, config.error_message_max_bytes),
            "traceback": trace,
        }

    def _end(self, exc: BaseException | None) -> None:
        if self._state != _RUNNING:
            return
        if exc is None:
            self.complete()
        elif isinstance(exc, _CANCELLATIONS):
            self.cancel(error_class(exc))
        else:
            self.fail(exc)

    def __enter__(self) -> Invocation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end(exc)

    def __repr__(self) -> str:
        state = "running" if self._state == _RUNNING else "ended"
        return f"<Invocation {self.id} root={self.root_id} {state} children={self._children}>"


_content_hash = content_hash  # output() has a parameter of that name


def _taken(values: Iterable[Any]) -> tuple[list[Any], str | None]:
    """The items of ``values`` until it ends or raises, and what it raised."""
    out: list[Any] = []
    try:
        for value in values:
            out.append(value)
    except Exception as e:  # a user's iterator failing midway
        return out, type(e).__name__
    return out, None


class Batch(Sequence[Invocation]):
    """One invocation per input message, all sharing one batch id.

    A sequence of ``Invocation`` (in the order of the inputs); each item can end
    on its own (``complete``/``fail``/``cancel``). On leaving the ``with`` block,
    items still running complete, or, if the block raised, fail with its
    exception (which propagates unchanged).
    """

    __slots__ = ("_batch", "_items", "_rec")

    def __init__(
        self,
        recorder: LineageRecorder,
        execution_id: Any,
        route_id: Any,
        adapter_name: Any,
        inputs: Iterable[Any],
        parents: Iterable[Any] | None,
        metadata: Any,
        input_keys: Iterable[Any] | None,
    ) -> None:
        self._rec = recorder
        self._batch = new_time_id()
        self._items: tuple[Invocation, ...] = ()
        try:
            # What could be read is recorded: the inputs taken before an
            # iterator raised, and none of parents or keys that cannot be read;
            # every item notes what its batch lost.
            lost: list[tuple[str, str]] = []
            values, broken = _taken(inputs)
            if broken is not None:
                lost.append(("inputs", f"reading them raised {broken} after {len(values)}"))
            parent_list: list[Any] = []
            key_list: list[Any] = []
            for field, given, out in (
                ("parents", parents, parent_list),
                ("input_keys", input_keys, key_list),
            ):
                if given is None:
                    continue
                out[:], broken = _taken(given)
                if broken is not None:
                    lost.append((field, f"reading them raised {broken} after {len(out)}"))
                if len(out) != len(values):
                    lost.append((field, f"{len(out)} given for {len(values)} inputs"))
            if lost:
                recorder._log.warning("batch", "lineage: batch of %d inputs: %s", len(values), lost)
            items = []
            for i, value in enumerate(values):
                notes = None
                for field, what in lost:
                    notes = _noted(notes, field, what)
                items.append(
                    Invocation(
                        recorder,
                        execution_id,
                        route_id,
                        adapter_name,
                        value,
                        parent_list[i] if i < len(parent_list) else None,
                        None,
                        metadata,
                        key_list[i] if i < len(key_list) else None,
                        None,
                        self._batch,
                        notes,
                    )
                )
            self._items = tuple(items)
        except Exception as e:
            recorder._internal_error("batch", e)

    @property
    def id(self) -> uuid.UUID:
        """The batch id every item carries."""
        return uuid.UUID(bytes=self._batch)

    @property
    def items(self) -> tuple[Invocation, ...]:
        return self._items

    @overload
    def __getitem__(self, index: int) -> Invocation: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Invocation]: ...

    def __getitem__(self, index: int | slice) -> Invocation | Sequence[Invocation]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Invocation]:
        return iter(self._items)

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for item in self._items:
            item._end(exc)

    def __repr__(self) -> str:
        return f"<Batch {self.id} of {len(self._items)}>"


class Execution:
    """One pipeline execution, started when it was created; ``.id`` is its id.

    As a context manager it records how the execution finished: completed on a
    normal exit, failed if the block raised (the exception propagates
    unchanged), cancelled on KeyboardInterrupt or asyncio cancellation. Or end
    it yourself with ``complete()``, ``fail(error)`` or ``cancel()``.
    """

    __slots__ = ("_id", "_rec", "_slot", "_state", "_table")

    def __init__(
        self,
        recorder: LineageRecorder,
        pipeline: Any,
        execution_id: Any,
        metadata: Mapping[str, Any] | None,
        replay_of: Any,
        replay_from_stage: Any,
    ) -> None:
        self._rec = recorder
        self._id = new_time_id()
        self._state = _RUNNING
        self._table: OpenTable | None = None
        self._slot: Slot | None = None
        try:
            notes: Notes | None = None
            if execution_id is not None:
                try:
                    self._id = parse_id(execution_id)[0]
                except Exception as e:  # a user's object whose __str__ (or .id) raises
                    self._id = unprintable_id(execution_id)
                    notes = _noted(notes, "execution_id", _unreadable_id(e, self._id))
            replay: bytes | None = None
            if replay_of is not None:
                try:
                    replay = parse_id(replay_of)[0]
                except Exception as e:
                    notes = _noted(notes, "replay_of", f"could not be read ({type(e).__name__})")
            payload = {
                "execution_id": self._id,
                "pipeline": _text(pipeline),
                "metadata": _NO_METADATA if metadata is None else metadata,
                "replay_of": replay,
                "replay_from_stage": None
                if replay_from_stage is None
                else _text(replay_from_stage),
            }
            if notes is not None:
                payload = recorder._fit(_EXECUTION_STARTED, payload, notes)
            self._table, self._slot = recorder._emit_begin(
                EXECUTION, self._id, self._id, self._id, _EXECUTION_STARTED, payload
            )
        except Exception as e:
            recorder._internal_error("execution", e)

    @property
    def id(self) -> uuid.UUID:
        """The execution id: pass it (or this object) as ``execution_id``."""
        return uuid.UUID(bytes=self._id)

    def _finish(self, status: str, error: str | None) -> None:
        if self._state != _RUNNING:
            return
        self._state = _ENDED
        try:
            limit = self._rec.config.error_message_max_bytes
            self._rec._emit_end(
                self._table,
                self._slot,
                self._id,
                _EXECUTION_FINISHED,
                self._id,
                {
                    "execution_id": self._id,
                    "status": status,
                    "error": None if error is None else truncate(_text(error), limit),
                },
            )
        except Exception as e:
            self._rec._internal_error("execution-finish", e)

    def complete(self) -> None:
        """Record that the execution completed (no-op if it already finished)."""
        self._finish(ExecutionStatus.COMPLETED.value, None)

    def fail(self, error: BaseException | str) -> None:
        """Record that the execution failed (no-op if it already finished)."""
        if isinstance(error, BaseException):
            text = f"{error_class(error)}: {safe_str(error)}"
        else:
            text = safe_str(error)
        self._finish(ExecutionStatus.FAILED.value, text)

    def cancel(self, reason: str | None = None) -> None:
        """Record that the execution was cancelled (no-op if it already finished)."""
        self._finish(ExecutionStatus.CANCELLED.value, reason)

    def __enter__(self) -> Execution:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.complete()
        elif isinstance(exc, _CANCELLATIONS):
            self.cancel(error_class(exc))
        else:
            self.fail(exc)

    def __repr__(self) -> str:
        return f"<Execution {self.id}>"
