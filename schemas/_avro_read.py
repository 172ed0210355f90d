"""Avro binary readers compiled from a writer and a reader schema (Avro schema
resolution done once, at compile time; see _avro_schema for the shapes)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Final

from ._avro_schema import (
    DOUBLE,
    FLOAT,
    INT_MAX,
    INT_MIN,
    PROMOTIONS,
    Malformed,
    Reader,
    SchemaError,
    Truncated,
    default_datum,
    kind_of,
    normalize,
    short_name,
    tuple_mode,
)

# Readers index ``data`` directly; running off its end raises IndexError (from
# ``data[pos]``), Truncated (lengths checked before slicing) or struct.error (from
# unpack_from). The caller translates all of these, and ValueError, into one error.


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    pos += 1
    if byte < 0x80:  # most longs on our topic (lengths, indexes, counters) fit one byte
        return (byte >> 1) ^ -(byte & 1), pos
    n = byte & 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise Malformed("varint longer than 10 bytes")
    if n >> 64:
        raise Malformed("varint does not fit a long")
    return (n >> 1) ^ -(n & 1), pos


def _read_int(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = _read_long(data, pos)
    if not INT_MIN <= value <= INT_MAX:
        raise Malformed(f"{value} does not fit an int")
    return value, pos


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    size = data[pos]
    if size < 0x80 and not size & 1:  # a non-negative one-byte length
        size >>= 1
        pos += 1
    else:
        size, pos = _read_long(data, pos)
        if size < 0:
            raise Malformed(f"negative length {size}")
    end = pos + size
    if end > len(data):
        raise Truncated(f"length {size} runs past the end of the data")
    return data[pos:end], end


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    # _read_bytes inlined: strings are the most frequent field of our events.
    size = data[pos]
    if size < 0x80 and not size & 1:
        size >>= 1
        pos += 1
    else:
        size, pos = _read_long(data, pos)
        if size < 0:
            raise Malformed(f"negative length {size}")
    end = pos + size
    if end > len(data):
        raise Truncated(f"length {size} runs past the end of the data")
    return data[pos:end].decode("utf-8"), end


def _read_null(data: bytes, pos: int) -> tuple[None, int]:
    return None, pos


def _read_boolean(data: bytes, pos: int) -> tuple[bool, int]:
    byte = data[pos]
    if byte > 1:
        raise Malformed(f"boolean byte {byte}")
    return byte == 1, pos + 1


def _read_float(data: bytes, pos: int) -> tuple[float, int]:
    return FLOAT.unpack_from(data, pos)[0], pos + 4


def _read_double(data: bytes, pos: int) -> tuple[float, int]:
    return DOUBLE.unpack_from(data, pos)[0], pos + 8


def _read_long_as_float(data: bytes, pos: int) -> tuple[float, int]:
    value, pos = _read_long(data, pos)
    return float(value), pos


def _read_bytes_as_string(data: bytes, pos: int) -> tuple[str, int]:
    value, pos = _read_bytes(data, pos)
    return value.decode("utf-8"), pos


_PRIMITIVE_READERS: Final[dict[tuple[str, str], Reader]] = {
    ("null", "null"): _read_null,
    ("boolean", "boolean"): _read_boolean,
    ("int", "int"): _read_int,
    ("long", "long"): _read_long,
    ("float", "float"): _read_float,
    ("double", "double"): _read_double,
    ("bytes", "bytes"): _read_bytes,
    ("string", "string"): _read_string,
    ("int", "long"): _read_int,
    ("int", "float"): _read_long_as_float,
    ("int", "double"): _read_long_as_float,
    ("long", "float"): _read_long_as_float,
    ("long", "double"): _read_long_as_float,
    ("float", "double"): _read_float,
    ("string", "bytes"): _read_bytes,
    ("bytes", "string"): _read_bytes_as_string,
}


def _read_index(data: bytes, pos: int, count: int) -> tuple[int, int]:
    """A union branch or enum symbol index, checked to be in range(count)."""
    index, pos = _read_long(data, pos)
    if not 0 <= index < count:
        raise Malformed(f"index {index} out of range({count})")
    return index, pos


def compile_reader(writer_schema: Any, reader_schema: Any) -> Reader:
    """Compile a reader of data written with ``writer_schema`` that returns values
    shaped by ``reader_schema`` (Avro schema resolution, done once, here).

    Raises SchemaError when the reader cannot read the writer's data at all.
    """
    return _ReaderCompiler().resolve(normalize(writer_schema), normalize(reader_schema))


def _matches(writer: Any, reader: Any) -> bool:
    """Whether the writer type may be read as the reader type (not recursive)."""
    writer_kind, reader_kind = kind_of(writer), kind_of(reader)
    if writer_kind in ("record", "enum", "fixed") or reader_kind in ("record", "enum", "fixed"):
        return writer_kind == reader_kind and short_name(writer["name"]) == short_name(
            reader["name"]
        )
    return writer_kind == reader_kind or reader_kind in PROMOTIONS.get(writer_kind, ())


def _first_match(writer: Any, union: list[Any]) -> int | None:
    # The spec's rule, as fastavro does it: the first branch that matches, promotions
    # included (Java prefers an exact match; no union of ours can tell the difference).
    for index, branch in enumerate(union):
        if _matches(writer, branch):
            return index
    return None


def _describe(node: Any) -> str:
    return str(node["name"]) if isinstance(node, dict) and "name" in node else kind_of(node)


class _ReaderCompiler:
    def __init__(self) -> None:
        self._named: dict[tuple[str, str], Reader] = {}

    def resolve(self, writer: Any, reader: Any) -> Reader:
        writer_kind, reader_kind = kind_of(writer), kind_of(reader)
        if writer_kind == "union":
            return self._writer_union(writer, reader)
        if reader_kind == "union":
            index = _first_match(writer, reader)
            if index is None:
                raise SchemaError(
                    f"writer {_describe(writer)} matches no branch of the reader union"
                )
            read, name = self._branch(writer, reader, index)
            if name is None:
                return read

            def read_named(data: bytes, pos: int) -> tuple[Any, int]:
                value, pos = read(data, pos)
                return (name, value), pos

            return read_named
        if not _matches(writer, reader):
            raise SchemaError(f"cannot read writer {_describe(writer)} as {_describe(reader)}")
        if (writer_kind, reader_kind) in _PRIMITIVE_READERS:
            return _PRIMITIVE_READERS[writer_kind, reader_kind]
        if writer_kind in ("record", "enum", "fixed"):
            known = self._named.get((writer["name"], reader["name"]))
            if known is not None:
                return known
        method: Callable[[Any, Any], Reader] = getattr(self, f"_{writer_kind}")
        return method(writer, reader)

    def _branch(self, writer: Any, union: list[Any], index: int) -> tuple[Reader, str | None]:
        """The reader of a writer type into reader union branch ``index``, and the
        name to pair the value with when the union is read as (name, value)."""
        branch = union[index]
        named = tuple_mode(union) and isinstance(branch, dict) and "name" in branch
        return self.resolve(writer, branch), branch["name"] if named else None

    def _writer_union(self, writer: list[Any], reader: Any) -> Reader:
        branches: list[tuple[Reader, str | None]] = []
        for branch in writer:
            index = _first_match(branch, reader) if kind_of(reader) == "union" else None
            if index is not None:
                branches.append(self._branch(branch, reader, index))
            elif kind_of(reader) != "union" and _matches(branch, reader):
                branches.append((self.resolve(branch, reader), None))
            else:
                # Legal per the spec: data is readable until this branch shows up.
                branches.append((_unreadable(branch), None))
        count = len(branches)
        if count == 2 and branches[0] == (_read_null, None) and branches[1][1] is None:
            read_value = branches[1][0]

            def read_optional(data: bytes, pos: int) -> tuple[Any, int]:
                # ["null", X], by far the most common union: two one-byte cases.
                index = data[pos]
                if index == 0:
                    return None, pos + 1
                if index == 2:
                    return read_value(data, pos + 1)
                raise Malformed(f"index {_read_long(data, pos)[0]} out of range(2)")

            return read_optional

        limit = min(count, 64) << 1  # indexes below 64 are one byte

        def read_union(data: bytes, pos: int) -> tuple[Any, int]:
            index = data[pos]
            if index < limit and not index & 1:
                index >>= 1
                pos += 1
            else:
                index, pos = _read_index(data, pos, count)
            read, name = branches[index]
            value, pos = read(data, pos)
            if name is None:
                return value, pos
            return (name, value), pos

        return read_union

    def _fixed(self, writer: dict[str, Any], reader: dict[str, Any]) -> Reader:
        size: int = writer["size"]
        if reader["size"] != size:
            raise SchemaError(f"{writer['name']}: fixed size {size} != {reader['size']}")

        def read_fixed(data: bytes, pos: int) -> tuple[bytes, int]:
            end = pos + size
            if end > len(data):
                raise Truncated(f"fixed {writer['name']} runs past the end of the data")
            return data[pos:end], end

        self._named[writer["name"], reader["name"]] = read_fixed
        return read_fixed

    def _enum(self, writer: dict[str, Any], reader: dict[str, Any]) -> Reader:
        symbols = reader["symbols"]
        default = reader.get("default")
        # Writer index -> reader symbol; None when the reader has neither the symbol
        # nor a default (an error only if that symbol is ever read).
        table: list[str | None] = [s if s in symbols else default for s in writer["symbols"]]
        count = len(table)

        limit = min(count, 64) << 1  # indexes below 64 are one byte

        def read_enum(data: bytes, pos: int) -> tuple[str, int]:
            index = data[pos]
            if index < limit and not index & 1:
                index >>= 1
                pos += 1
            else:
                index, pos = _read_index(data, pos, count)
            symbol = table[index]
            if symbol is None:
                raise Malformed(f"symbol {writer['symbols'][index]} unknown to {reader['name']}")
            return symbol, pos

        self._named[writer["name"], reader["name"]] = read_enum
        return read_enum

    def _record(self, writer: dict[str, Any], reader: dict[str, Any]) -> Reader:
        reader_fields = {f["name"]: f for f in reader["fields"]}
        writer_names = {f["name"] for f in writer["fields"]}
        # (name or None to skip, reader); filled after registering, for recursion.
        steps: list[tuple[str | None, Reader]] = []
        defaults: list[tuple[str, Any]] = []
        for field in reader["fields"]:
            if field["name"] not in writer_names:
                if "default" not in field:
                    raise SchemaError(
                        f"{reader['name']}.{field['name']}: not written by the writer, no default"
                    )
                defaults.append((field["name"], default_datum(field["type"], field["default"])))

        if writer_names <= reader_fields.keys() and not defaults:
            # The common case (writer == reader): nothing to skip, nothing to add.
            def read_record(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
                out: dict[str, Any] = {}
                for name, read in steps:
                    out[name], pos = read(data, pos)  # type: ignore[index]
                return out, pos
        else:

            def read_record(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
                out: dict[str, Any] = {}
                for name, read in steps:
                    value, pos = read(data, pos)
                    if name is not None:
                        out[name] = value
                for name, default in defaults:
                    # Copied: a mutable default ({} for a map) must not be shared.
                    out[name] = copy.deepcopy(default)
                return out, pos

        self._named[writer["name"], reader["name"]] = read_record
        for field in writer["fields"]:
            target = reader_fields.get(field["name"])
            if target is None:
                steps.append((None, self.resolve(field["type"], field["type"])))
            else:
                steps.append((field["name"], self.resolve(field["type"], target["type"])))
        return read_record

    def _map(self, writer: dict[str, Any], reader: dict[str, Any]) -> Reader:
        read_value = self.resolve(writer["values"], reader["values"])

        def read_map(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
            out: dict[str, Any] = {}
            count, pos = _read_long(data, pos)
            while count:
                if count < 0:  # a block with its size in bytes, which we do not need
                    count = -count
                    _, pos = _read_long(data, pos)
                # Each entry takes at least a byte (its key's length), so a hostile
                # count runs off the end of the data instead of looping for long.
                for _ in range(count):
                    key, pos = _read_string(data, pos)
                    out[key], pos = read_value(data, pos)
                count, pos = _read_long(data, pos)
            return out, pos

        return read_map

    def _array(self, writer: dict[str, Any], reader: dict[str, Any]) -> Reader:
        if _zero_width(writer["items"], set()):
            # A hostile item count (2**63 nulls) would loop without consuming input.
            raise SchemaError("arrays of items that take no bytes are not supported")
        read_item = self.resolve(writer["items"], reader["items"])

        def read_array(data: bytes, pos: int) -> tuple[list[Any], int]:
            out: list[Any] = []
            count, pos = _read_long(data, pos)
            while count:
                if count < 0:
                    count = -count
                    _, pos = _read_long(data, pos)
                # Each item takes at least a byte (see _zero_width), so a hostile
                # count runs off the end of the data instead of looping for long.
                for _ in range(count):
                    item, pos = read_item(data, pos)
                    out.append(item)
                count, pos = _read_long(data, pos)
            return out, pos

        return read_array


def _unreadable(writer: Any) -> Reader:
    def read_unreadable(data: bytes, pos: int) -> tuple[Any, int]:
        raise Malformed(f"union branch {_describe(writer)} is unknown to the reader schema")

    return read_unreadable


def _zero_width(node: Any, seen: set[str]) -> bool:
    """Whether values of this type may encode to no bytes at all."""
    kind = kind_of(node)
    if kind == "null":
        return True
    if kind == "fixed":
        return bool(node["size"] == 0)
    if kind == "record" and node["name"] not in seen:
        seen.add(node["name"])
        return all(_zero_width(field["type"], seen) for field in node["fields"])
    return False
