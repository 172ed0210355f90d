"""LineageRef: what one stage hands the next so that lineage forms a chain."""

from __future__ import annotations

import uuid
from typing import Any, Final, NoReturn

_HEADER_PREFIX: Final = "v1:"


class LineageRef:
    """A pointer to a lineage row: its id and the id of its chain's root.

    Pass it as ``parent=`` to the next stage's ``invocation``. Between processes,
    carry it as a message header: ``ref.to_header()`` is a 68-character ASCII
    string (``LineageRef.from_header`` reads it back, also as bytes), and
    ``bytes(ref)`` / ``LineageRef.from_bytes`` are the 32-byte binary form.
    Immutable, hashable, comparable, picklable.
    """

    __slots__ = ("_lineage", "_root")
    _lineage: bytes
    _root: bytes

    def __init__(self, lineage_id: uuid.UUID, root_id: uuid.UUID) -> None:
        object.__setattr__(self, "_lineage", lineage_id.bytes)
        object.__setattr__(self, "_root", root_id.bytes)

    @classmethod
    def _of(cls, lineage: bytes, root: bytes) -> LineageRef:
        # The recorder's path: no UUID objects built on the caller's hot path.
        ref = object.__new__(cls)
        object.__setattr__(ref, "_lineage", lineage)
        object.__setattr__(ref, "_root", root)
        return ref

    @property
    def lineage_id(self) -> uuid.UUID:
        """The id of the lineage row (the invocation that produced the message)."""
        return uuid.UUID(bytes=self._lineage)

    @property
    def root_id(self) -> uuid.UUID:
        """The id of the first invocation of the chain (the Kafka message key)."""
        return uuid.UUID(bytes=self._root)

    def to_header(self) -> str:
        """``"v1:<lineage id hex>:<root id hex>"``."""
        return f"{_HEADER_PREFIX}{self._lineage.hex()}:{self._root.hex()}"

    @classmethod
    def from_header(cls, header: str | bytes) -> LineageRef:
        """Read ``to_header()``'s form (str, or its ASCII bytes); ValueError if malformed."""
        text = header.decode("ascii") if isinstance(header, bytes | bytearray) else header
        if not isinstance(text, str) or not text.startswith(_HEADER_PREFIX):
            raise ValueError(f"not a lineage header: {header!r}")
        parts = text[len(_HEADER_PREFIX) :].split(":")
        if len(parts) != 2:
            raise ValueError(f"not a lineage header: {header!r}")
        return cls._of(uuid.UUID(parts[0]).bytes, uuid.UUID(parts[1]).bytes)

    def __bytes__(self) -> bytes:
        return self._lineage + self._root

    @classmethod
    def from_bytes(cls, data: bytes) -> LineageRef:
        """Read the 32-byte form (``bytes(ref)``); ValueError if it has another length."""
        if len(data) != 32:
            raise ValueError(f"a lineage ref is 32 bytes, not {len(data)}")
        return cls._of(bytes(data[:16]), bytes(data[16:]))

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("LineageRef is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("LineageRef is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LineageRef):
            return NotImplemented
        return self._lineage == other._lineage and self._root == other._root

    def __hash__(self) -> int:
        return hash((self._lineage, self._root))

    def __repr__(self) -> str:
        return f"LineageRef(lineage_id={self.lineage_id!s}, root_id={self.root_id!s})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (LineageRef.from_bytes, (bytes(self),))


def parse_parent(parent: object) -> tuple[bytes, bytes] | None:
    """(lineage id, root id) of a ``parent=`` argument; None when it is None.

    Raises ValueError or TypeError for something that is not a parent.
    """
    if type(parent) is LineageRef:
        return parent._lineage, parent._root
    if parent is None:
        return None
    if isinstance(parent, LineageRef):
        return parent._lineage, parent._root
    if isinstance(parent, str | bytes | bytearray):
        if isinstance(parent, bytes | bytearray) and len(parent) == 32:
            ref = LineageRef.from_bytes(bytes(parent))
        else:
            ref = LineageRef.from_header(parent if isinstance(parent, str) else bytes(parent))
        return ref._lineage, ref._root
    inner = getattr(parent, "ref", None)  # an Invocation: its outputs' parent
    if isinstance(inner, LineageRef):
        return inner._lineage, inner._root
    raise TypeError(f"parent must be a LineageRef or its header, not {type(parent).__name__}")
