"""Avro binary writers compiled from schemas (see _avro_schema for why and the shapes)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

from ._avro_schema import (
    DOUBLE,
    FLOAT,
    INT_MAX,
    INT_MIN,
    LONG_MAX,
    LONG_MIN,
    InvalidDatum,
    Writer,
    default_datum,
    kind_of,
    normalize,
    short_name,
    tuple_mode,
)

# Errors a writer raises for a value of the wrong type or range; translated once,
# in the record writer, into InvalidDatum with the field path.
_DATUM_ERRORS: Final = (
    TypeError,
    ValueError,
    KeyError,
    AttributeError,
    OverflowError,
    struct.error,
)

_MISSING: Final = object()


def _write_long(value: int, buf: bytearray) -> None:
    if not LONG_MIN <= value <= LONG_MAX:
        raise OverflowError(f"{value} does not fit a long")
    n = (value << 1) ^ (value >> 63)  # zig-zag
    while n >= 0x80:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def _write_int(value: int, buf: bytearray) -> None:
    if not INT_MIN <= value <= INT_MAX:
        raise OverflowError(f"{value} does not fit an int")
    _write_long(value, buf)


def _write_bytes(value: bytes, buf: bytearray) -> None:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    size = len(value)
    if size < 64:
        buf.append(size << 1)  # the zig-zag varint of a small length is one byte
    else:
        _write_long(size, buf)
    buf += value


def _write_string(value: str, buf: bytearray) -> None:
    if type(value) is not str and not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    data = value.encode("utf-8")
    size = len(data)
    if size < 64:
        buf.append(size << 1)
    else:
        _write_long(size, buf)
    buf += data


def _write_null(value: None, buf: bytearray) -> None:
    if value is not None:
        raise TypeError(f"expected None, got {type(value).__name__}")


def _write_boolean(value: bool, buf: bytearray) -> None:
    if value is True:
        buf.append(1)
    elif value is False:
        buf.append(0)
    else:
        raise TypeError(f"expected bool, got {type(value).__name__}")


def _write_float(value: float, buf: bytearray) -> None:
    buf += FLOAT.pack(value)


def _write_double(value: float, buf: bytearray) -> None:
    buf += DOUBLE.pack(value)


_PRIMITIVE_WRITERS: Final[dict[str, Writer]] = {
    "null": _write_null,
    "boolean": _write_boolean,
    "int": _write_int,
    "long": _write_long,
    "float": _write_float,
    "double": _write_double,
    "bytes": _write_bytes,
    "string": _write_string,
}
# Python types a value of each Avro type may have, for picking a union branch.
_PYTHON_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (float, int),
    "double": (float, int),
    "bytes": (bytes, bytearray),
    "string": (str,),
    "fixed": (bytes, bytearray),
    "enum": (str,),
    "record": (dict, Mapping),
    "map": (dict, Mapping),
    "array": (list,),  # not tuple: a tuple is the (name, value) notation
}


def _varint(value: int) -> bytes:
    buf = bytearray()
    _write_long(value, buf)
    return bytes(buf)


def compile_writer(schema: Any) -> Writer:
    """Compile a (JSON-decoded) schema into a writer of its binary encoding."""
    return _WriterCompiler().compile(normalize(schema))


class _WriterCompiler:
    def __init__(self) -> None:
        self._named: dict[str, Writer] = {}

    def compile(self, node: Any) -> Writer:
        kind = kind_of(node)
        if kind in _PRIMITIVE_WRITERS:
            return _PRIMITIVE_WRITERS[kind]
        if kind == "union":
            return self._union(node)
        if kind in ("record", "enum", "fixed") and node["name"] in self._named:
            return self._named[node["name"]]
        method: Callable[[Any], Writer] = getattr(self, f"_{kind}")
        return method(node)

    def _fixed(self, node: dict[str, Any]) -> Writer:
        size: int = node["size"]

        def write_fixed(value: bytes, buf: bytearray) -> None:
            if not isinstance(value, bytes | bytearray) or len(value) != size:
                raise TypeError(f"expected {size} bytes, got {value!r}")
            buf += value

        self._named[node["name"]] = write_fixed
        return write_fixed

    def _enum(self, node: dict[str, Any]) -> Writer:
        indexes = {symbol: _varint(i) for i, symbol in enumerate(node["symbols"])}

        def write_enum(value: str, buf: bytearray) -> None:
            try:
                buf += indexes[value]
            except (KeyError, TypeError):
                raise ValueError(f"{value!r} is not a symbol of {node['name']}") from None

        self._named[node["name"]] = write_enum
        return write_enum

    def _record(self, node: dict[str, Any]) -> Writer:
        # (name, writer, default or _MISSING); filled after registering the writer,
        # so that a recursive reference finds it.
        fields: list[tuple[str, Writer, Any]] = []

        def write_record(value: Mapping[str, Any], buf: bytearray) -> None:
            name = ""
            try:
                for name, write, default in fields:
                    try:
                        item = value[name]
                    except KeyError:
                        if default is _MISSING:
                            raise InvalidDatum("", "missing") from None
                        item = default
                    write(item, buf)
            except InvalidDatum as e:
                # Re-raised level by level so that the message names the full path.
                raise InvalidDatum(f"{name}.{e.path}" if e.path else name, e.reason) from e
            except _DATUM_ERRORS as e:
                raise InvalidDatum(name, f"{type(e).__name__}: {e}") from e

        self._named[node["name"]] = write_record
        for field in node["fields"]:
            default = (
                default_datum(field["type"], field["default"]) if "default" in field else _MISSING
            )
            fields.append((field["name"], self.compile(field["type"]), default))
        return write_record

    def _map(self, node: dict[str, Any]) -> Writer:
        write_value = self.compile(node["values"])

        def write_map(value: Mapping[str, Any], buf: bytearray) -> None:
            if value:
                _write_long(len(value), buf)
                for key, item in value.items():
                    _write_string(key, buf)
                    write_value(item, buf)
            buf.append(0)

        return write_map

    def _array(self, node: dict[str, Any]) -> Writer:
        write_item = self.compile(node["items"])

        def write_array(value: list[Any], buf: bytearray) -> None:
            if value:
                _write_long(len(value), buf)
                for item in value:
                    write_item(item, buf)
            buf.append(0)

        return write_array

    def _union(self, node: list[Any]) -> Writer:
        if len(node) == 2 and node[0] == "null" and kind_of(node[1]) != "union":
            # ["null", X], by far the most common union: no lookup by type.
            write_value = self.compile(node[1])

            def write_optional(value: Any, buf: bytearray) -> None:
                if value is None:
                    buf.append(0)
                else:
                    buf.append(2)  # zig-zag varint of branch index 1
                    write_value(value, buf)

            return write_optional
        by_name: dict[str, tuple[bytes, Writer]] = {}
        by_type: dict[type, tuple[bytes, Writer]] = {}
        named_by_tuple = tuple_mode(node)
        for index, branch in enumerate(node):
            entry = (_varint(index), self.compile(branch))
            if isinstance(branch, dict) and "name" in branch:
                by_name.setdefault(branch["name"], entry)
                by_name.setdefault(short_name(branch["name"]), entry)
                if named_by_tuple:
                    continue
            for python_type in _PYTHON_TYPES[kind_of(branch)]:
                by_type.setdefault(python_type, entry)  # the first branch that fits wins

        def write_union(value: Any, buf: bytearray) -> None:
            entry = by_type.get(type(value))
            if entry is None:
                value, entry = _pick_branch(value, by_name, by_type)
            buf += entry[0]
            entry[1](value, buf)

        return write_union


def _pick_branch(
    value: Any, by_name: dict[str, tuple[bytes, Writer]], by_type: dict[type, tuple[bytes, Writer]]
) -> tuple[Any, tuple[bytes, Writer]]:
    """The slow path of choosing a union branch: (name, value) notation, or a subclass
    of a branch's Python type (bool before int: bool is tried by exact type first)."""
    if type(value) is tuple and len(value) == 2:
        name, inner = value
        if name not in by_name:
            raise ValueError(f"union has no branch named {name!r}")
        return inner, by_name[name]
    for python_type, entry in by_type.items():
        if isinstance(value, python_type):
            return value, entry
    expected = ", ".join(sorted({t.__name__ for t in by_type} | set(by_name)))
    raise TypeError(f"no union branch for {type(value).__name__} (expected {expected})")
