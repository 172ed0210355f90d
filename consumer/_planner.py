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

Events PostgreSQL cannot store faithfully (NUL characters, timestamps outside
years 1-9999, negative child counts, a payload that does not match its type)
and rows named their own parent (a cycle no counter could settle) are
rejected with a reason instead of failing the whole batch; events of a type
this release does not know (``UNKNOWN``) are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Microseconds since 1970-01-01 of 0001-01-01 and of 9999-12-31T23:59:59.999999:
# the range a Python datetime (the read side) can hold.
MIN_MICROS = -62_135_596_800_000_000
MAX_MICROS = 253_402_300_799_999_999
MAX_INT4 = 2**31 - 1
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
    """Why ``event`` cannot be projected, or None when it can (or is ignored)."""
    try:
        _check(event)
    except _Invalid as e:
        return str(e)
    except (KeyError, TypeError, AttributeError) as e:
        return _malformed(e)
    return None


# slot of a lineage or execution id: [start key, start event, end key, status, end event]
_Slot = list[Any]


def plan(events: Sequence[Mapping[str, Any]]) -> Plan:
    """Coalesce one batch of decoded events into staged lineage and execution rows."""
    rows: dict[bytes, _Slot] = {}
    execs: dict[bytes, _Slot] = {}
    rejected: list[RejectedEvent] = []
    ignored = 0
    # The two kinds that make up nearly every batch are checked inline (a
    # function call per field costs more than the check); anything unusual
    # goes through _check, which also words the reason for a rejection.
    for index, event in enumerate(events):
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
                    and type(adapter) is str
                    and "\x00" not in adapter
                    and (
                        input_hash is None or (type(input_hash) is str and "\x00" not in input_hash)
                    )
                    and (input_key is None or (type(input_key) is str and "\x00" not in input_key))
                ):
                    raise _Invalid
                for key, item in p["metadata"].items():
                    if type(key) is not str or "\x00" in key:
                        raise _Invalid
                    if type(item) is str:
                        if "\x00" in item:
                            raise _Invalid
                    elif type(item) not in _SCALARS:
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
                # Rare kinds: checked the slow way.
                checked = _check(event)
                if checked is None:
                    ignored += 1
                    continue
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
        except (_Invalid, KeyError, TypeError, AttributeError):
            rejected.append(RejectedEvent(index=index, reason=_reason(event)))
            continue
        end_key = (rank, at, event_id)
        slot = rows.get(lid)
        if slot is None:
            rows[lid] = [None, None, end_key, status, event]
        elif slot[2] is None or end_key > slot[2]:
            slot[2] = end_key
            slot[3] = status
            slot[4] = event
    return Plan(
        # Lineage rows in the order they first appear (roughly time order, which
        # keeps the inserts near the right edge of the time-ordered indexes).
        lineage=[_lineage_row(lid, slot) for lid, slot in rows.items()],
        # Execution rows in id order: the order in which every writer locks them.
        executions=[_execution_row(xid, execs[xid]) for xid in sorted(execs)],
        events=len(events),
        ignored=ignored,
        rejected=tuple(rejected),
    )


def _reason(event: Mapping[str, Any]) -> str:
    return invalid_reason(event) or "malformed event"


_NO_START = (None,) * 11
_NO_END = (None,) * 9


def _lineage_row(lid: bytes, slot: _Slot) -> Row:
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
    if status == "completed":
        tail: Row = (
            end["event_id"],
            status,
            1,
            p["execution_id"],
            p["output_hash"],
            None,
            None,
            end["occurred_at"] - PG_EPOCH_MICROS,
            p["children"],
        )
    else:
        error = None
        if status == "failed":
            error = dump_json(
                {
                    "class": p["error_class"],
                    "message": p["error_message"],
                    "traceback": p["traceback"],
                }
            )
        tail = (
            end["event_id"],
            status,
            slot[2][0],
            p["execution_id"],
            None,
            error,
            p["reason"] if status == "cancelled" else None,
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

    Raises _Invalid, or KeyError/TypeError/AttributeError for a payload of the
    wrong shape. Types the codec guarantees are checked only as far as a wrong
    one would reach PostgreSQL: ids by their length, strings by NUL characters
    (which PostgreSQL text cannot hold).
    """
    kind = event["event_type"]
    if kind in IGNORED_TYPES:
        return None
    if len(event["event_id"]) != 16:
        raise _Invalid("event_id is not a 16-byte UUID")
    at = event["occurred_at"]
    if type(at) is not int or not MIN_MICROS <= at <= MAX_MICROS:
        raise _Invalid(f"occurred_at {at!r} is outside years 1-9999")
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
        _text(p["route_id"], "route_id")
        _text(p["adapter_name"], "adapter_name")
        _optional_text(p["input_hash"], "input_hash")
        _optional_text(p["input_key"], "input_key")
        _metadata(p["metadata"])
    elif kind in TERMINAL:
        if len(p["lineage_id"]) != 16 or len(p["execution_id"]) != 16:
            raise _Invalid("an id of the terminal event is not a 16-byte UUID")
        children = p["children"]
        if type(children) is not int or not 0 <= children <= MAX_INT4:
            raise _Invalid(f"children {children!r} is not a count")
        if kind == "INVOCATION_COMPLETED":
            _optional_text(p["output_hash"], "output_hash")
        elif kind == "INVOCATION_FAILED":
            _text(p["error_class"], "error_class")
            _text(p["error_message"], "error_message")
            _optional_text(p["traceback"], "traceback")
        else:
            _optional_text(p["reason"], "reason")
    elif kind == EXECUTION_STARTED:
        replay_of = p.get("replay_of")
        if len(p["execution_id"]) != 16 or (replay_of is not None and len(replay_of) != 16):
            raise _Invalid("an id of the execution start is not a 16-byte UUID")
        _text(p["pipeline"], "pipeline")
        _optional_text(p.get("replay_from_stage"), "replay_from_stage")
        _metadata(p["metadata"])
    elif kind == EXECUTION_FINISHED:
        if len(p["execution_id"]) != 16:
            raise _Invalid("execution_id is not a 16-byte UUID")
        if p["status"] not in FINISHED:
            raise _Invalid(f"unknown execution status {p['status']!r}")
        _optional_text(p["error"], "error")
    else:
        raise _Invalid(f"unknown event type {kind!r}")
    return str(kind)


def _text(value: Any, name: str) -> None:
    if type(value) is not str:
        raise _Invalid(f"{name} is not a string")
    if "\x00" in value:
        raise _Invalid(f"{name} contains a NUL character")


def _optional_text(value: Any, name: str) -> None:
    if value is not None:
        _text(value, name)


def _metadata(value: Mapping[str, Any]) -> None:
    for key, item in value.items():
        _text(key, "metadata key")
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                raise _Invalid(f"metadata[{key!r}] contains a NUL character")
        elif kind not in _SCALARS:
            raise _Invalid(f"metadata[{key!r}] is not a scalar")
