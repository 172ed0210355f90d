"""Making user data fit the event contract: bounded text, encodable metadata.

The hot path never calls these: it hands the user's values to the codec as they
are and only comes here when the codec refuses them or the event is too big,
or when the caller passed something it could not take (see ``fit_payload``).

What the contract carries but the tables cannot hold (NUL, NaN, long routes)
travels as given: the projector repairs it, by the same policy
(``factflow_lineage._repair``), so the topic keeps the fact as it was told.
"""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Mapping, Set
from typing import Any, Final

from factflow_lineage._repair import (
    NOTED_IN_METADATA,
    REPLACEMENT,
    TEXT_FIELDS,
    Notes,
    append_note,
    name,
    repair_payload,
    truncate,
    with_note,
)

_SURROGATES: Final = re.compile("[\ud800-\udfff]")

_LONG_MIN: Final = -(1 << 63)
_LONG_MAX: Final = (1 << 63) - 1
# A cut metadata value or free-text field keeps this much when an event is over
# event_max_bytes; ample for a value that identifies something.
SHRUNK_FIELD_BYTES: Final = 1024


def valid_text(value: object, max_bytes: int | None = None) -> str:
    """``value`` as a str that UTF-8 can encode, cut to ``max_bytes`` if given
    (lone surrogates become U+FFFD, as ``factflow_lineage._repair`` says)."""
    if type(value) is str:
        text = value
    elif isinstance(value, str):
        text = str.__getitem__(value, slice(None))  # an exact str, whatever the subclass overrides
    else:
        text = safe_str(value)
    if not text.isascii():  # O(1); only non-ASCII text can hold a lone surrogate
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _SURROGATES.sub(REPLACEMENT, text)
    return truncate(text, max_bytes) if max_bytes is not None else text


def safe_str(value: object) -> str:
    """``str(value)``, or something descriptive when its ``__str__`` raises."""
    try:
        return str(value)
    except Exception:  # a user's broken __str__ must not break the recorder
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"


def _json_default(value: object) -> Any:
    if isinstance(value, Set):
        return sorted((coerce_value(v) for v in value), key=lambda v: (str(type(v)), str(v)))
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return safe_str(value)


def coerce_value(value: object) -> bool | int | float | str | None:
    """A metadata value the contract can carry: scalars as they are, containers
    as canonical JSON text, bytes as hex, anything else as ``str(value)``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value) if _LONG_MIN <= value <= _LONG_MAX else str(int(value))
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return valid_text(str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping | list | tuple | Set):
        data: Any = dict(value) if isinstance(value, Mapping) else value
        if isinstance(data, dict):
            # JSON object keys must be text; mixed key types would make sort_keys fail.
            data = {safe_str(k) if not isinstance(k, str) else k: v for k, v in data.items()}
        try:
            return json.dumps(
                data,
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
                default=_json_default,
                allow_nan=True,
            )
        except (TypeError, ValueError, RecursionError):  # circular, unsortable
            return valid_text(safe_str(value))
    return valid_text(safe_str(value))


def coerce_metadata(metadata: object) -> dict[str, Any]:
    """Metadata the codec can encode, whatever the user passed."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        return {"metadata": coerce_value(metadata)}
    return {
        (valid_text(key) if isinstance(key, str) else valid_text(safe_str(key))): coerce_value(v)
        for key, v in metadata.items()
    }


def shrink_metadata(metadata: dict[str, Any], budget: int) -> dict[str, Any]:
    """Metadata cut down to roughly ``budget`` bytes: long texts truncated, then,
    if it is still too big, replaced by one entry that says what was dropped."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        k = truncate(key, 256)
        out[k] = truncate(value, SHRUNK_FIELD_BYTES) if isinstance(value, str) else value
    size = sum(len(k) + (len(v) if isinstance(v, str) else 8) for k, v in out.items())
    if size > budget:
        return {"factflow.truncated": f"{len(metadata)} metadata entries dropped (too large)"}
    return out


def error_class(exc: BaseException) -> str:
    """The exception's class, qualified by its module unless it is a builtin."""
    kind = type(exc)
    module = getattr(kind, "__module__", None)
    name = getattr(kind, "__qualname__", kind.__name__)
    return name if module in (None, "builtins", "__main__") else f"{module}.{name}"


def format_traceback(exc: BaseException) -> str:
    """The traceback as Python prints it, chained causes included."""
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:  # an exception whose formatting fails (broken __str__, cycles)
        return f"{error_class(exc)}: <traceback could not be formatted>"


# --- the slow path: what the caller passed, as the contract and the tables take it


def _type_name(value: object) -> str:
    return type(value).__name__


def fit_metadata(metadata: object, notes: Notes) -> tuple[dict[str, Any], bool]:
    """Metadata of the contract's scalars, whatever the user passed, and whether
    anything had to be converted (``metadata_coerced``).

    Values the contract carries as they are (str, int, float, bool, None) are
    left for ``repair_payload``, which notes what the tables cannot hold; a
    map that cannot even be read is noted and recorded as empty.
    """
    if metadata is None:
        return {}, False
    if not isinstance(metadata, Mapping):
        return {"metadata": coerce_value(metadata)}, True
    try:
        items = list(metadata.items())
    except Exception as e:  # a user's mapping whose items() raises
        notes.add("metadata", f"could not be read ({_type_name(e)}); recorded without it")
        return {}, True
    out: dict[str, Any] = {}
    coerced = type(metadata) is not dict
    for key, value in items:
        if type(key) is not str:
            key = valid_text(key)
            coerced = True
        if value is None or type(value) in _CARRIED:
            out[key] = value
            continue
        coerced = True
        try:
            out[key] = coerce_value(value)
        except Exception as e:  # a container whose items() or __iter__ raises
            out[key] = f"<unreadable {_type_name(value)}>"
            notes.add(f"metadata[{name(key)}]", f"could not be read ({_type_name(e)})")
    return out, coerced


_CARRIED: Final = frozenset({str, int, float, bool})


def fit_payload(
    event_type: str, payload: dict[str, Any], notes: Notes | None = None
) -> tuple[dict[str, Any], bool, bool]:
    """``payload`` as the contract and the tables take it, the note of what was
    changed put where the row keeps it; and whether metadata was coerced and
    whether anything was noted.

    ``notes``: what could not be taken of the caller's arguments already; the
    repairs' notes follow. Where a note goes:
    a start's and an execution start's into their metadata
    (``factflow.repaired``); a failure's as the last line of its traceback, a
    cancellation's of its reason, an execution finish's of its error (the
    contract has no field of its own for it; the projector moves the first two
    into the row's error). A completion holds only the recorder's own values.
    """
    notes = Notes() if notes is None else notes
    out = dict(payload)
    coerced = False
    for field, optional, _ in TEXT_FIELDS[event_type]:
        value = out.get(field)
        if type(value) is str or (optional and value is None):
            continue
        if isinstance(value, str):  # a subclass: its exact text, silently
            out[field] = str.__getitem__(value, slice(None))
            continue
        out[field] = safe_str(value)
        notes.add(field, f"{_article(_type_name(value))} given, recorded as its text")
    if event_type in NOTED_IN_METADATA:
        out["metadata"], coerced = fit_metadata(out.get("metadata"), notes)
    out = repair_payload(event_type, out, notes)
    note = notes.text()
    if note is None:
        return out, coerced, False
    if event_type in NOTED_IN_METADATA:
        out["metadata"] = with_note(out["metadata"], note)
    elif event_type == "INVOCATION_FAILED":
        out["traceback"] = append_note(out["traceback"], note)
    elif event_type == "INVOCATION_CANCELLED":
        out["reason"] = append_note(out["reason"], note)
    elif event_type == "EXECUTION_FINISHED":
        out["error"] = append_note(out["error"], note)
    return out, coerced, True


def _article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word
