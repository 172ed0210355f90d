"""Making user data fit the event contract: bounded text, encodable metadata.

The hot path never calls these: it hands the user's values to the codec as they
are and only comes here when the codec refuses them or the event is too big.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping, Set
from typing import Any, Final

_LONG_MIN: Final = -(1 << 63)
_LONG_MAX: Final = (1 << 63) - 1
# A cut metadata value or free-text field keeps this much when an event is over
# event_max_bytes; ample for a value that identifies something.
SHRUNK_FIELD_BYTES: Final = 1024


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


def valid_text(value: object, max_bytes: int | None = None) -> str:
    """``value`` as a str that UTF-8 can encode, cut to ``max_bytes`` if given."""
    text = value if isinstance(value, str) else safe_str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from os.fsdecode
        text = text.encode("utf-8", "replace").decode("utf-8")
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
