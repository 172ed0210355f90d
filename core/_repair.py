"""Values the tables cannot hold, repaired the same way wherever they enter.

The event contract carries nearly anything, and PostgreSQL stores nearly
anything the contract carries, but not all of it: ``text`` and ``jsonb``
cannot hold NUL (U+0000) nor lone surrogates (which UTF-8 cannot encode),
``jsonb`` cannot hold NaN or the infinities, the read side shows times of
years 1-9999 only, a child count is an ``integer``, and a btree index entry
holds at most 2,704 bytes (route and adapter are indexed). Rejecting such an
event would lose the fact for the sake of one value, so both places where
events enter repair them with the functions of this module, one policy:

* NUL and lone surrogates in any text (metadata keys and values included)
  become U+FFFD, the Unicode replacement character;
* ``route_id`` and ``adapter_name`` are cut to ``INDEXED_TEXT_BYTES`` bytes
  (head and tail kept, a marker says how much was cut);
* NaN, Infinity and -Infinity become the texts ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"``; an integer beyond 64 bits becomes its decimal text;
* a time outside years 1-9999 is clamped to the nearest end of that range;
* a child count outside 0..2**31-1 is clamped into it.

The recorder applies it on its slow path (producer/_events.py), the
projector's planner to every event of any other producer (consumer/_planner.py),
and the test suite's reference model to the same events. It lives here, in
the package all of them import, rather than in schemas/: the contract can
carry these values; it is the tables that cannot hold them.

Every change is noted, never silent: the note lists ``field: what was done``
entries, joined by ``"; "``, and is stored with the row (see ``NOTE_KEY``,
``note_line`` and ``split_note`` for where). A note depends only on the
event it describes, so any order or duplication of events gives the same
tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

#: Metadata key of a start's note (the recorder's ``factflow.truncated`` is its sibling).
NOTE_KEY: Final = "factflow.repaired"
#: What replaces a character the tables cannot hold.
REPLACEMENT: Final = "\ufffd"
#: Microseconds since 1970-01-01 of 0001-01-01 and of 9999-12-31T23:59:59.999999:
#: the range a Python datetime (the read side) can hold.
MIN_MICROS: Final = -62_135_596_800_000_000
MAX_MICROS: Final = 253_402_300_799_999_999
MAX_INT4: Final = 2**31 - 1
#: An indexed text's bound: route and adapter share index entries of at most
#: 2,704 bytes (btree) with a UUID and a timestamp; 1 KiB each leaves room.
INDEXED_TEXT_BYTES: Final = 1024
_INT64: Final = (-(2**63), 2**63 - 1)
# A note names at most this many fields; a hostile map of thousands of bad
# keys must not make a note larger than the event.
_MAX_ENTRIES: Final = 16
_NAME_CHARS: Final = 64
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
_LINE_START: Final = "[" + NOTE_KEY + ": "
_NON_FINITE: Final = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


class Notes:
    """What a repair changed, as ``field: what`` entries in the order found."""

    __slots__ = ("entries", "more")

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.more = 0

    def add(self, field: str, what: str) -> None:
        if len(self.entries) < _MAX_ENTRIES:
            self.entries.append(f"{field}: {what}")
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.entries)

    def text(self) -> str | None:
        """The note, or None when nothing was changed."""
        if not self.entries:
            return None
        more = f"; and {self.more} more" if self.more else ""
        return "; ".join(self.entries) + more


def name(value: str) -> str:
    """A user's name (a metadata key) as a note shows it: quoted, escaped, short."""
    shown = repr(value if len(value) <= _NAME_CHARS else value[:_NAME_CHARS] + "...")
    return _UNSTORABLE.sub(REPLACEMENT, shown)


def truncate(text: str, max_bytes: int) -> str:
    """``text`` if its UTF-8 form fits ``max_bytes``, else its head and tail with
    a marker saying how much was cut in between.

    Tracebacks need both ends: the head says where the call came from, the tail
    holds the innermost frames and the exception itself.
    """
    if len(text) * 4 <= max_bytes:  # no UTF-8 character is longer than 4 bytes
        return text
    raw = text.encode("utf-8", "replace")  # "replace": lone surrogates become "?"
    if len(raw) <= max_bytes:
        return raw.decode("utf-8")
    marker_room = 64
    keep = max(max_bytes - marker_room, 0)
    head = keep // 2
    tail = keep - head
    cut = len(raw) - head - tail
    # errors="ignore" drops a character split by the cut instead of failing on it.
    return (
        raw[:head].decode("utf-8", "ignore")
        + f"\n[... {cut} bytes cut ...]\n"
        + raw[len(raw) - tail :].decode("utf-8", "ignore")
    )


def clean_text(value: str) -> tuple[str, str | None]:
    """``value`` with NUL and lone surrogates replaced, and what was replaced."""
    nul = "\x00" in value
    if value.isascii():  # O(1): no surrogate in an ASCII string
        if not nul:
            return value, None
        return value.replace("\x00", REPLACEMENT), "NUL replaced by U+FFFD"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        what = "NUL and lone surrogates" if nul else "lone surrogates"
        return _UNSTORABLE.sub(REPLACEMENT, value), f"{what} replaced by U+FFFD"
    if not nul:
        return value, None
    return value.replace("\x00", REPLACEMENT), "NUL replaced by U+FFFD"


def repair_text(notes: Notes, field: str, value: str, max_bytes: int | None = None) -> str:
    """A text the tables can hold; TypeError when ``value`` is not a str."""
    if type(value) is not str:
        raise TypeError(f"{field} is not a string")
    text, what = clean_text(value)
    if what is not None:
        notes.add(field, what)
    if max_bytes is not None and len(text) * 4 > max_bytes:
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            text = truncate(text, max_bytes)
            notes.add(field, f"{size} bytes cut to {max_bytes}")
    return text


def repair_optional_text(
    notes: Notes, field: str, value: str | None, max_bytes: int | None = None
) -> str | None:
    return None if value is None else repair_text(notes, field, value, max_bytes)


def repair_scalar(notes: Notes, field: str, value: Any) -> Any:
    """A metadata value jsonb can hold; TypeError when it is not a scalar of the contract."""
    kind = type(value)
    if kind is str:
        return repair_text(notes, field, value)
    if kind is float:
        if math.isfinite(value):
            return value
        text = _NON_FINITE[repr(value)]
        notes.add(field, f"{text} recorded as text")
        return text
    if kind is int:
        if _INT64[0] <= value <= _INT64[1]:
            return value
        notes.add(field, "integer beyond 64 bits recorded as text")
        return str(value)
    if value is None or kind is bool:
        return value
    raise TypeError(f"{field} is not a scalar")


def repair_metadata(notes: Notes, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata whose keys and values the tables can hold.

    A repaired key that another key already has gets more U+FFFD until it is
    unique: nothing is overwritten, and which key gets which name depends only
    on the map's own order.
    """
    out: dict[str, Any] = {}
    taken = set(metadata)
    for key, value in metadata.items():
        if type(key) is not str:
            raise TypeError("a metadata key is not a string")
        fixed, what = clean_text(key)
        if what is not None:
            while fixed in taken or fixed in out:
                fixed += REPLACEMENT
            notes.add(f"metadata key {name(fixed)}", what)
        out[fixed] = repair_scalar(notes, f"metadata[{name(fixed)}]", value)
    return out


def repair_micros(notes: Notes, field: str, value: int) -> int:
    """A time of years 1-9999; TypeError when ``value`` is not an int."""
    if type(value) is not int:
        raise TypeError(f"{field} {value!r} is not a time")
    if MIN_MICROS <= value <= MAX_MICROS:
        return value
    clamped = MIN_MICROS if value < MIN_MICROS else MAX_MICROS
    end = "0001-01-01" if value < MIN_MICROS else "9999-12-31T23:59:59.999999Z"
    notes.add(field, f"{value} µs is outside years 1-9999, clamped to {end}")
    return clamped


def repair_count(notes: Notes, field: str, value: int) -> int:
    """A count of 0..2**31-1; TypeError when ``value`` is not an int."""
    if type(value) is not int:
        raise TypeError(f"{field} {value!r} is not a count")
    if 0 <= value <= MAX_INT4:
        return value
    clamped = 0 if value < 0 else MAX_INT4
    notes.add(field, f"{value} is not a count, recorded as {clamped}")
    return clamped


# The text fields of each payload: name -> (optional, bound). Ids, enums and
# counts are not text; ``metadata`` is repaired by repair_metadata.
TEXT_FIELDS: Final[dict[str, tuple[tuple[str, bool, int | None], ...]]] = {
    "INVOCATION_STARTED": (
        ("route_id", False, INDEXED_TEXT_BYTES),
        ("adapter_name", False, INDEXED_TEXT_BYTES),
        ("input_hash", True, None),
        ("input_key", True, None),
    ),
    "INVOCATION_COMPLETED": (("output_hash", True, None),),
    "INVOCATION_FAILED": (
        ("error_class", False, None),
        ("error_message", False, None),
        ("traceback", True, None),
    ),
    "INVOCATION_CANCELLED": (("reason", True, None),),
    "EXECUTION_STARTED": (("pipeline", False, None), ("replay_from_stage", True, None)),
    "EXECUTION_FINISHED": (("error", True, None),),
}
#: Event types whose note goes into their own metadata (see ``with_note``).
NOTED_IN_METADATA: Final = frozenset({"INVOCATION_STARTED", "EXECUTION_STARTED"})
_COUNTED: Final = frozenset({"INVOCATION_COMPLETED", "INVOCATION_FAILED", "INVOCATION_CANCELLED"})


def repair_payload(event_type: str, payload: Mapping[str, Any], notes: Notes) -> dict[str, Any]:
    """A copy of ``payload`` (of the record ``event_type`` names) the tables can hold.

    Raises KeyError or TypeError for a payload that does not match its type.
    """
    out = dict(payload)
    for field, optional, bound in TEXT_FIELDS[event_type]:
        if optional:
            # replay_from_stage came in v2, with a default: v1 events lack it.
            value = payload.get(field) if field == "replay_from_stage" else payload[field]
            out[field] = repair_optional_text(notes, field, value, bound)
        else:
            out[field] = repair_text(notes, field, payload[field], bound)
    if event_type in NOTED_IN_METADATA:
        out["metadata"] = repair_metadata(notes, payload["metadata"])
    elif event_type in _COUNTED:
        out["children"] = repair_count(notes, "children", payload["children"])
    return out


def with_note(metadata: Mapping[str, Any], note: str) -> dict[str, Any]:
    """``metadata`` with ``note`` under NOTE_KEY, after a note already there."""
    out = dict(metadata)
    earlier = out.get(NOTE_KEY)
    if earlier is not None:
        note = f"{earlier}; {note}"
    out[NOTE_KEY] = note
    return out


def note_line(note: str) -> str:
    """How a note rides at the end of a text field (a traceback, a reason, an
    execution's error): the contract has no field of its own for it."""
    return f"{_LINE_START}{note}]"


def append_note(text: str | None, note: str) -> str:
    """``text`` with ``note_line(note)`` as its last line."""
    return note_line(note) if not text else f"{text}\n{note_line(note)}"


def split_note(text: str | None) -> tuple[str | None, str | None]:
    """``text`` without the note line ``append_note`` ended it with, and that note."""
    if text is None or not text.endswith("]"):
        return text, None
    if text.startswith(_LINE_START) and "\n" not in text:
        return None, text[len(_LINE_START) : -1]
    at = text.rfind("\n" + _LINE_START)
    if at < 0 or "\n" in text[at + 1 :]:
        return text, None
    return text[:at], text[at + 1 + len(_LINE_START) : -1]


def join_notes(*notes: str | None) -> str | None:
    """The notes that are there, in order, as one."""
    present = [n for n in notes if n]
    return "; ".join(present) if present else None


def repair_event(event: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """``event`` as the tables can hold it, and the note of an invocation's
    terminal event (which its row keeps in its error: see the planner).

    ``event`` itself when nothing needed a repair, else a repaired copy.

    A start's or an execution start's note is put into its metadata
    (``with_note``), an execution finish's at the end of its error text
    (``append_note``); their second value is None. Raises KeyError or
    TypeError for an event whose payload does not match its type.
    """
    kind = event["event_type"]
    notes = Notes()
    at = repair_micros(notes, "occurred_at", event["occurred_at"])
    payload = repair_payload(kind, event["payload"], notes)
    note = notes.text()
    if note is None:
        return event, None
    out = {**event, "occurred_at": at, "payload": payload}
    if kind in NOTED_IN_METADATA:
        payload["metadata"] = with_note(payload["metadata"], note)
        return out, None
    if kind == "EXECUTION_FINISHED":
        payload["error"] = append_note(payload["error"], note)
        return out, None
    return out, note
