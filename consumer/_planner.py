"""The batch planner: a consumed batch of raw events, coalesced into one row per id.

Pure Python, no database. Within a batch, every lineage id (and execution id)
keeps only the events that would win the merge in SQL anyway: the earliest
start and the most severe, then latest, terminal event. A start and its
completion in the same batch thus become one staged row, one insert.

The winning rules are total orders on events, so the result is the same for
any order and any duplication of the batch's events:

* start: the smallest ``(occurred_at, event_id)``;
* terminal: the largest ``(rank, occurred_at, event_id)`` with rank
  failed 3 > cancelled 2 > completed 1 (an execution's finish likewise).

Values PostgreSQL cannot hold (NUL characters, times outside years 1-9999,
child counts that are not an int4, NaN, route names too long for an index)
are repaired and noted on the row, by the policy of
``factflow_lineage._repair`` that the recorder applies too: a fact is never
lost for a value. Only events whose shape does not match their type (a
field missing or of the wrong type, an id that is not 16 bytes, an unknown
type or status) and rows named their own parent (a cycle no counter could
settle) are rejected with a reason instead of failing the whole batch;
events of a type this release does not know (``UNKNOWN``) are ignored.

Where a note goes (the row layout has no column for it): a start's into its
metadata under ``factflow.repaired``, an execution start's likewise, an
invocation's terminal event's into the row's ``error`` jsonb under
``repaired`` (beside class, message and traceback of a failure; alone for a
completed or cancelled row), an execution finish's as the last line of the
execution's ``error`` text. Each comes from the winning event alone, so the
tables stay a function of the set of events.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from factflow_lineage._repair import (
    INDEXED_TEXT_BYTES,
    MAX_INT4,
    MAX_MICROS,
    MIN_MICROS,
    join_notes,
    repair_event,
    split_note,
)

# An indexed text of at most this many characters fits its bound whatever
# they are (no UTF-8 character is longer than 4 bytes).
_SHORT_TEXT = INDEXED_TEXT_BYTES // 4
# Unix epoch -> PostgreSQL epoch (2000-01-01), in microseconds.
PG_EPOCH_MICROS = 946_684_800_000_000
JSONB_VERSION = "\x01"

STARTED = "INVOCATION_STARTED"
EXECUTION_STARTED = "EXECUTION_STARTED"
EXECUTION_FINISHED = "EXECUTION_FINISHED"
# event type -> (row status, precedence rank)
TERMINAL: dict[str, tuple[str, int]] = {
    "INVOCATION_COMPLETED": ("completed", 1),
    "INVOCATION_CANCELLED": ("cancelled", 2),
    "INVOCATION_FAILED": ("failed", 3),
}
# ExecutionStatus symbol -> (execution status, precedence rank)
FINISHED: dict[str, tuple[str, int]] = {
    "COMPLETED": ("completed", 1),
    "CANCELLED": ("cancelled", 2),
    "FAILED": ("failed", 3),
}
IGNORED_TYPES = frozenset({"UNKNOWN"})

# Column order of the staged rows (the COPY into the temporary staging tables).
# Values are staged in PostgreSQL's binary format of the column's type, built
# from what psycopg's C dumpers write fastest: a uuid as its 16 raw bytes (sent
# as bytea), a timestamptz as microseconds since 2000-01-01 (sent as int8),
# a jsonb as version byte 1 + JSON text (sent as text). See _sql.WIRE_TYPE.
LINEAGE_STAGE: tuple[tuple[str, str], ...] = (
    ("id", "uuid"),
    ("start_event_id", "uuid"),
    ("execution_id", "uuid"),
    ("root_id", "uuid"),
    ("parent_id", "uuid"),
    ("route_id", "text"),
    ("adapter_name", "text"),
    ("input_hash", "text"),
    ("batch_id", "uuid"),
    ("input_key", "text"),
    ("metadata", "jsonb"),
    ("started_at", "timestamptz"),
    ("terminal_event_id", "uuid"),
    ("status", "text"),
    ("status_rank", "int2"),
    ("term_execution_id", "uuid"),
    ("output_hash", "text"),
    ("error", "jsonb"),
    ("cancel_reason", "text"),
    ("completed_at", "timestamptz"),
    ("children_expected", "int4"),
)
EXECUTION_STAGE: tuple[tuple[str, str], ...] = (
    ("id", "uuid"),
    ("start_event_id", "uuid"),
    ("pipeline", "text"),
    ("metadata", "jsonb"),
    ("replay_of", "uuid"),
    ("replay_from_stage", "text"),
    ("started_at", "timestamptz"),
    ("finish_event_id", "uuid"),
    ("status", "text"),
    ("error", "text"),
    ("finished_at", "timestamptz"),
)

Row = tuple[Any, ...]


@dataclass(frozen=True, kw_only=True)
class RejectedEvent:
    """An event of the batch that cannot be projected: its index in the batch and why."""

    index: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A batch coalesced: staged rows sorted by id, plus what was left out."""

    lineage: list[Row]
    executions: list[Row]
    events: int
    ignored: int
    rejected: tuple[RejectedEvent, ...]


class _Invalid(Exception):
    pass


def invalid_reason(event: Mapping[str, Any]) -> str | None:
    """Why ``event`` cannot be projected, or None when it can (repaired, if need
    be) or is ignored."""
    try:
        if _check(event) is not None:
            repair_event(event)
    except (_Invalid, KeyError, TypeError, AttributeError) as e:
        return _why(e)
    return None


# slot of a lineage or execution id: [start key, start event, end key, status, end event]
_Slot = list[Any]


def plan(events: Sequence[Mapping[str, Any]]) -> Plan:
    """Coalesce one batch of decoded events into staged lineage and execution rows."""
    rows: dict[bytes, _Slot] = {}
    execs: dict[bytes, _Slot] = {}
    rejected: list[RejectedEvent] = []
    # id(event) -> the note of a repaired terminal event (the row's error.repaired)
    notes: dict[int, str] = {}
    retry: list[tuple[int, Mapping[str, Any]]] = []
    ignored = _place(enumerate(events), rows, execs, notes, retry, rejected)
    if retry:
        # The events the fast checks refused: repaired (a copy), or rejected
        # with a reason when their shape is wrong. Placed after the others,
        # which changes nothing: the winners are total orders.
        fixed: list[tuple[int, Mapping[str, Any]]] = []
        for index, event in retry:
            try:
                if _check(event) is None:
                    ignored += 1
                    continue
                repaired, note = repair_event(event)
            except (_Invalid, KeyError, TypeError, AttributeError) as e:
                rejected.append(RejectedEvent(index=index, reason=_why(e)))
                continue
            if note is not None:
                notes[id(repaired)] = note
            fixed.append((index, repaired))
        ignored += _place(fixed, rows, execs, notes, None, rejected)
        rejected.sort(key=lambda r: r.index)
    return Plan(
        # Lineage rows in the order they first appear (roughly time order, which
        # keeps the inserts near the right edge of the time-ordered indexes).
        lineage=[_lineage_row(lid, slot, notes) for lid, slot in rows.items()],
        # Execution rows in id order: the order in which every writer locks them.
        executions=[_execution_row(xid, execs[xid]) for xid in sorted(execs)],
        events=len(events),
        ignored=ignored,
        rejected=tuple(rejected),
    )


def _place(
    events: Iterable[tuple[int, Mapping[str, Any]]],
    rows: dict[bytes, _Slot],
    execs: dict[bytes, _Slot],
    notes: dict[int, str],
    retry: list[tuple[int, Mapping[str, Any]]] | None,
    rejected: list[RejectedEvent],
) -> int:
    """Put each event into the slot of its id where it wins; the number ignored.

    An event the fast checks refuse goes to ``retry`` (to be repaired), or,
    when ``retry`` is None (it was repaired already), is rejected.
    """
    ignored = 0
    # The two kinds that make up nearly every batch are checked inline (a
    # function call per field costs more than the check); anything unusual
    # goes through _check and repair_event, which also word the reason for a
    # rejection.
    for index, event in events:
        try:
            kind = event["event_type"]
            at = event["occurred_at"]
            event_id = event["event_id"]
            p = event["payload"]
            if not (type(at) is int and MIN_MICROS <= at <= MAX_MICROS and len(event_id) == 16):
                raise _Invalid
            if kind == STARTED:
                lid = p["lineage_id"]
                parent = p["parent_id"]
                batch = p["batch_id"]
                route = p["route_id"]
                adapter = p["adapter_name"]
                input_hash = p["input_hash"]
                input_key = p["input_key"]
                if not (
                    len(lid) == 16
                    and len(p["execution_id"]) == 16
                    and len(p["root_id"]) == 16
                    and (parent is None or (len(parent) == 16 and parent != lid))
                    and (batch is None or len(batch) == 16)
                    and type(route) is str
                    and "\x00" not in route
                    and (
                        len(route) <= _SHORT_TEXT
                        or len(route.encode("utf-8")) <= INDEXED_TEXT_BYTES
                    )
                    and type(adapter) is str
                    and "\x00" not in adapter
                    and (
                        len(adapter) <= _SHORT_TEXT
                        or len(adapter.encode("utf-8")) <= INDEXED_TEXT_BYTES
                    )
                    and (
                        input_hash is None or (type(input_hash) is str and "\x00" not in input_hash)
                    )
                    and (input_key is None or (type(input_key) is str and "\x00" not in input_key))
                ):
                    raise _Invalid
                for key, item in p["metadata"].items():
                    if type(key) is not str or "\x00" in key:
                        raise _Invalid
                    item_type = type(item)
                    if item_type is str:
                        if "\x00" in item:
                            raise _Invalid
                    elif item_type is float:
                        if item - item:  # NaN for NaN and the infinities, 0.0 otherwise
                            raise _Invalid
                    elif item_type not in _SCALARS:
                        raise _Invalid
                slot = rows.get(lid)
                if slot is None:
                    rows[lid] = [(at, event_id), event, None, None, None]
                    continue
                start_key = (at, event_id)
                if slot[0] is None or start_key < slot[0]:
                    slot[0] = start_key
                    slot[1] = event
                continue
            if kind == "INVOCATION_COMPLETED":
                lid = p["lineage_id"]
                children = p["children"]
                output_hash = p["output_hash"]
                if not (
                    len(lid) == 16
                    and len(p["execution_id"]) == 16
                    and type(children) is int
                    and 0 <= children <= MAX_INT4
                    and (
                        output_hash is None
                        or (type(output_hash) is str and "\x00" not in output_hash)
                    )
                ):
                    raise _Invalid
                status, rank = "completed", 1
            else:
                # Rare kinds: checked and repaired the slow way, always.
                checked = _check(event)
                if checked is None:
                    ignored += 1
                    continue
                event, note = repair_event(event)
                if note is not None:
                    notes[id(event)] = note
                at = event["occurred_at"]
                p = event["payload"]
                if checked == EXECUTION_STARTED:
                    xid = p["execution_id"]
                    x_slot = execs.get(xid)
                    if x_slot is None:
                        x_slot = execs[xid] = [None, None, None, None, None]
                    start_key = (at, event_id)
                    if x_slot[0] is None or start_key < x_slot[0]:
                        x_slot[0] = start_key
                        x_slot[1] = event
                    continue
                if checked == EXECUTION_FINISHED:
                    status, rank = FINISHED[p["status"]]
                    xid = p["execution_id"]
                    x_slot = execs.get(xid)
                    if x_slot is None:
                        x_slot = execs[xid] = [None, None, None, None, None]
                    end_key = (rank, at, event_id)
                    if x_slot[2] is None or end_key > x_slot[2]:
                        x_slot[2] = end_key
                        x_slot[3] = status
                        x_slot[4] = event
                    continue
                lid = p["lineage_id"]
                status, rank = TERMINAL[checked]
        except (_Invalid, KeyError, TypeError, AttributeError, ValueError) as e:
            if retry is not None:
                retry.append((index, event))
            else:
                reason = _why(e) if str(e) else _reason(event)
                rejected.append(RejectedEvent(index=index, reason=reason))
            continue
        end_key = (rank, at, event_id)
        slot = rows.get(lid)
        if slot is None:
            rows[lid] = [None, None, end_key, status, event]
        elif slot[2] is None or end_key > slot[2]:
            slot[2] = end_key
            slot[3] = status
            slot[4] = event
    return ignored


def _why(error: Exception) -> str:
    if isinstance(error, _Invalid | TypeError) and str(error):
        return str(error)
    return _malformed(error)


def _reason(event: Mapping[str, Any]) -> str:
    return invalid_reason(event) or "malformed event"


_NO_START = (None,) * 11
_NO_END = (None,) * 9


def _lineage_row(lid: bytes, slot: _Slot, notes: dict[int, str]) -> Row:
    start = slot[1]
    end = slot[4]
    if start is None:
        head: Row = _NO_START
    else:
        p = start["payload"]
        input_key = p["input_key"]
        metadata = p["metadata"]
        if input_key is not None:
            # The guide reads the input's storage key as metadata.input_key.
            metadata = {**metadata, "input_key": input_key}
        try:
            meta_json = JSONB_VERSION + _encode(metadata)
        except ValueError:
            meta_json = dump_json(metadata)
        head = (
            start["event_id"],
            p["execution_id"],
            p["root_id"],
            p["parent_id"],
            p["route_id"],
            p["adapter_name"],
            p["input_hash"],
            p["batch_id"],
            input_key,
            meta_json,
            start["occurred_at"] - PG_EPOCH_MICROS,
        )
        if end is None:
            return (lid, *head, *_NO_END)
    status = slot[3]
    p = end["payload"]
    # The terminal event's note: the planner's (a repaired copy's), after the
    # recorder's, which rides as the last line of a traceback or a reason.
    note = notes.get(id(end)) if notes else None
    if status == "completed":
        tail: Row = (
            end["event_id"],
            status,
            1,
            p["execution_id"],
            p["output_hash"],
            None if note is None else dump_json({"repaired": note}),
            None,
            end["occurred_at"] - PG_EPOCH_MICROS,
            p["children"],
        )
    else:
        error = None
        reason = None
        if status == "failed":
            traceback, lifted = split_note(p["traceback"])
            failure = {
                "class": p["error_class"],
                "message": p["error_message"],
                "traceback": traceback,
            }
            note = join_notes(lifted, note)
            if note is not None:
                failure["repaired"] = note
            error = dump_json(failure)
        else:
            reason, lifted = split_note(p["reason"])
            note = join_notes(lifted, note)
            if note is not None:
                error = dump_json({"repaired": note})
        tail = (
            end["event_id"],
            status,
            slot[2][0],
            p["execution_id"],
            None,
            error,
            reason,
            end["occurred_at"] - PG_EPOCH_MICROS,
            p["children"],
        )
    return (lid, *head, *tail)


def _execution_row(xid: bytes, slot: _Slot) -> Row:
    start = slot[1]
    if start is None:
        head: Row = (None,) * 6
    else:
        p = start["payload"]
        head = (
            start["event_id"],
            p["pipeline"],
            dump_json(p["metadata"]),
            # v1 events have no replay fields.
            p.get("replay_of"),
            p.get("replay_from_stage"),
            start["occurred_at"] - PG_EPOCH_MICROS,
        )
    end = slot[4]
    if end is None:
        tail: Row = (None,) * 4
    else:
        tail = (
            end["event_id"],
            slot[3],
            end["payload"]["error"],
            end["occurred_at"] - PG_EPOCH_MICROS,
        )
    return (xid, *head, *tail)


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON scalar")


# The C encoder of the json module, built once: json.dumps builds one per call,
# which costs more than encoding a small map. ASCII output (\\uXXXX escapes)
# is what jsonb parses fastest.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
)
_PY_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _encode(value: Any) -> str:
    if _C_ENCODER is None:  # pragma: no cover - CPython always has the C accelerator
        return _PY_ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


def dump_json(value: Mapping[str, Any]) -> str:
    """A map as staged jsonb (see LINEAGE_STAGE); NaN and infinities become strings."""
    try:
        return JSONB_VERSION + _encode(value)
    except ValueError:
        return JSONB_VERSION + _encode({k: json_scalar(v) for k, v in value.items()})


def json_scalar(value: Any) -> Any:
    """A metadata value as JSON can hold it (non-finite floats as their names)."""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return "NaN"
        return "Infinity" if value > 0 else "-Infinity"
    return value


# --- validation -------------------------------------------------------------------

_SCALARS = frozenset({type(None), bool, int, float, str})


def _malformed(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"field {e.args[0]!r} missing (the payload does not match the event type)"
    return f"malformed event: {e}"


def _check(event: Mapping[str, Any]) -> str | None:
    """The event's type when it can be projected, None when it is to be ignored.

    Checks only the shape: raises _Invalid, or KeyError/TypeError/AttributeError
    for a payload that does not match its type. Types the codec guarantees are
    checked only as far as a wrong one would reach PostgreSQL (ids by their
    length); the values are repair_event's (text types and scalars too).
    """
    kind = event["event_type"]
    if kind in IGNORED_TYPES:
        return None
    if len(event["event_id"]) != 16:
        raise _Invalid("event_id is not a 16-byte UUID")
    p = event["payload"]
    if kind == STARTED:
        lid = p["lineage_id"]
        parent = p["parent_id"]
        batch = p["batch_id"]
        if (
            len(lid) != 16
            or len(p["execution_id"]) != 16
            or len(p["root_id"]) != 16
            or (parent is not None and len(parent) != 16)
            or (batch is not None and len(batch) != 16)
        ):
            raise _Invalid("an id of the start is not a 16-byte UUID")
        if parent == lid:
            # A row its own parent would make a cycle no counter could settle.
            raise _Invalid("parent_id equals lineage_id")
    elif kind in TERMINAL:
        if len(p["lineage_id"]) != 16 or len(p["execution_id"]) != 16:
            raise _Invalid("an id of the terminal event is not a 16-byte UUID")
    elif kind == EXECUTION_STARTED:
        replay_of = p.get("replay_of")
        if len(p["execution_id"]) != 16 or (replay_of is not None and len(replay_of) != 16):
            raise _Invalid("an id of the execution start is not a 16-byte UUID")
    elif kind == EXECUTION_FINISHED:
        if len(p["execution_id"]) != 16:
            raise _Invalid("execution_id is not a 16-byte UUID")
        if p["status"] not in FINISHED:
            raise _Invalid(f"unknown execution status {p['status']!r}")
    else:
        raise _Invalid(f"unknown event type {kind!r}")
    return str(kind)
