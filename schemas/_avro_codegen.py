"""Avro readers generated as Python source: the resolved schema as straight-line code.

``_avro_read`` resolves a writer and a reader schema into a tree of closures,
one call per value. For the event stream that is most of the projector's
decoding time: a lineage event is some twenty values, each a call returning a
tuple. Here the same resolution emits one function per (writer, reader) pair,
with every field read inline (the one-byte case of lengths, longs and union
indexes first, the rest through ``_avro_read``'s helpers) and each record built
as one dict display. Same values, same errors (the helpers raise them, the
messages are the closures'), about half the time.

Anything the generator does not inline (a recursive named type) is read by the
closure reader of that type, called from the generated code.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._avro_read import (
    _PRIMITIVE_READERS,
    _describe,
    _first_match,
    _matches,
    _read_index,
    _read_int,
    _read_long,
    _ReaderCompiler,
    _zero_width,
)
from ._avro_schema import (
    Malformed,
    Reader,
    SchemaError,
    Truncated,
    default_datum,
    kind_of,
    normalize,
    tuple_mode,
)

_MUTABLE = (dict, list)


def generate_reader(writer_schema: Any, reader_schema: Any) -> Reader:
    """A reader of ``writer_schema`` data shaped as ``reader_schema`` (see compile_reader).

    Raises SchemaError when the reader cannot read the writer's data at all.
    """
    gen = _Generator()
    writer, reader = normalize(writer_schema), normalize(reader_schema)
    gen.value(writer, reader, "value", 1)
    source = "\n".join(
        ["def read(data, pos):", "    n = len(data)", *gen.lines, "    return value, pos"]
    )
    namespace: dict[str, Any] = {
        "Malformed": Malformed,
        "Truncated": Truncated,
        "_read_long": _read_long,
        "_read_int": _read_int,
        "_read_index": _read_index,
        "_deepcopy": copy.deepcopy,
        **gen.constants,
    }
    exec(compile(source, f"<avro reader {_describe(writer)}>", "exec"), namespace)
    read: Reader = namespace["read"]
    read.source = source  # type: ignore[attr-defined]  # for the curious, and the tests
    return read


class _Generator:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._count = 0
        self._records: list[tuple[str, str]] = []  # named records being generated

    # --- helpers -------------------------------------------------------------------

    def _var(self, prefix: str = "v") -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def _const(self, value: Any) -> str:
        name = f"k{len(self.constants)}"
        self.constants[name] = value
        return name

    def _emit(self, indent: int, *lines: str) -> None:
        self.lines.extend("    " * indent + line for line in lines)

    def _call(self, read: Reader, target: str, indent: int) -> None:
        self._emit(indent, f"{target}, pos = {self._const(read)}(data, pos)")

    def _index(self, count: int, target: str, indent: int) -> None:
        """A union branch or enum index into ``target``, one-byte case inline."""
        limit = min(count, 64) << 1
        self._emit(
            indent,
            f"{target} = data[pos]",
            f"if {target} < {limit} and not {target} & 1:",
            f"    {target} >>= 1",
            "    pos += 1",
            "else:",
            f"    {target}, pos = _read_index(data, pos, {count})",
        )

    def _length(self, target: str, indent: int) -> None:
        """A byte length into ``target`` (pos after it), one-byte case inline."""
        self._emit(
            indent,
            f"{target} = data[pos]",
            f"if {target} < 0x80 and not {target} & 1:",
            f"    {target} >>= 1",
            "    pos += 1",
            "else:",
            f"    {target}, pos = _read_long(data, pos)",
            f"    if {target} < 0:",
            f"        raise Malformed(f'negative length {{{target}}}')",
            f"if pos + {target} > n:",
            f"    raise Truncated(f'length {{{target}}} runs past the end of the data')",
        )

    # --- values --------------------------------------------------------------------

    def value(self, writer: Any, reader: Any, target: str, indent: int) -> None:
        """Code that reads one ``writer`` value as ``reader`` into ``target``."""
        writer_kind, reader_kind = kind_of(writer), kind_of(reader)
        if writer_kind == "union":
            self._writer_union(writer, reader, target, indent)
            return
        if reader_kind == "union":
            index = _first_match(writer, reader)
            if index is None:
                raise SchemaError(
                    f"writer {_describe(writer)} matches no branch of the reader union"
                )
            self._branch(writer, reader, index, target, indent)
            return
        if not _matches(writer, reader):
            raise SchemaError(f"cannot read writer {_describe(writer)} as {_describe(reader)}")
        if (writer_kind, reader_kind) in _PRIMITIVE_READERS:
            self._primitive(writer_kind, reader_kind, target, indent)
        elif writer_kind == "record":
            key = (writer["name"], reader["name"])
            if key in self._records:  # recursive: the closure reader handles it
                self._call(_ReaderCompiler().resolve(writer, reader), target, indent)
            else:
                self._records.append(key)
                self._record(writer, reader, target, indent)
                self._records.pop()
        else:
            getattr(self, f"_{writer_kind}")(writer, reader, target, indent)

    def _branch(self, writer: Any, union: list[Any], index: int, target: str, indent: int) -> None:
        branch = union[index]
        if tuple_mode(union) and isinstance(branch, dict) and "name" in branch:
            inner = self._var()
            self.value(writer, branch, inner, indent)
            self._emit(indent, f"{target} = ({branch['name']!r}, {inner})")
        else:
            self.value(writer, branch, target, indent)

    def _primitive(self, writer_kind: str, reader_kind: str, target: str, indent: int) -> None:
        if writer_kind == "null":
            self._emit(indent, f"{target} = None")
        elif writer_kind in ("long", "int") and reader_kind in ("long", "int"):
            # A one-byte varint fits an int: only longer ones need the range check.
            slow = "_read_long" if writer_kind == "long" else "_read_int"
            self._emit(
                indent,
                f"{target} = data[pos]",
                f"if {target} < 0x80:",
                f"    {target} = ({target} >> 1) ^ -({target} & 1)",
                "    pos += 1",
                "else:",
                f"    {target}, pos = {slow}(data, pos)",
            )
        elif (writer_kind, reader_kind) in (("string", "string"), ("bytes", "bytes")):
            size = self._var("s")
            self._length(size, indent)
            decode = ".decode('utf-8')" if writer_kind == "string" else ""
            self._emit(indent, f"{target} = data[pos:pos + {size}]{decode}", f"pos += {size}")
        else:  # booleans, floats, promotions: rare on our topic, the closure's helper
            self._call(_PRIMITIVE_READERS[writer_kind, reader_kind], target, indent)

    def _fixed(self, writer: dict[str, Any], reader: dict[str, Any], target: str, ind: int) -> None:
        size: int = writer["size"]
        if reader["size"] != size:
            raise SchemaError(f"{writer['name']}: fixed size {size} != {reader['size']}")
        message = f"fixed {writer['name']} runs past the end of the data"
        self._emit(
            ind,
            f"if pos + {size} > n:",
            f"    raise Truncated({message!r})",
            f"{target} = data[pos:pos + {size}]",
            f"pos += {size}",
        )

    def _enum(self, writer: dict[str, Any], reader: dict[str, Any], target: str, ind: int) -> None:
        symbols = reader["symbols"]
        default = reader.get("default")
        table = [s if s in symbols else default for s in writer["symbols"]]
        index = self._var("i")
        self._index(len(table), index, ind)
        self._emit(ind, f"{target} = {self._const(table)}[{index}]")
        if None in table:
            names = self._const(writer["symbols"])
            self._emit(
                ind,
                f"if {target} is None:",
                f"    raise Malformed(f'symbol {{{names}[{index}]}} unknown to {reader['name']}')",
            )

    def _record(
        self, writer: dict[str, Any], reader: dict[str, Any], target: str, ind: int
    ) -> None:
        reader_fields = {f["name"]: f for f in reader["fields"]}
        writer_names = {f["name"] for f in writer["fields"]}
        items: list[str] = []
        for field in writer["fields"]:
            wanted = reader_fields.get(field["name"])
            var = self._var()
            if wanted is None:
                self.value(field["type"], field["type"], var, ind)  # read past it
            else:
                self.value(field["type"], wanted["type"], var, ind)
                items.append(f"{field['name']!r}: {var}")
        for field in reader["fields"]:
            if field["name"] in writer_names:
                continue
            if "default" not in field:
                raise SchemaError(
                    f"{reader['name']}.{field['name']}: not written by the writer, no default"
                )
            default = default_datum(field["type"], field["default"])
            value = self._const(default)
            # Copied: a mutable default ({} for a map) must not be shared.
            if isinstance(default, _MUTABLE):
                value = f"_deepcopy({value})"
            items.append(f"{field['name']!r}: {value}")
        self._emit(ind, f"{target} = {{{', '.join(items)}}}")

    def _writer_union(self, writer: list[Any], reader: Any, target: str, ind: int) -> None:
        reader_is_union = kind_of(reader) == "union"
        cases: list[tuple[Any, int | None]] = []  # (writer branch, reader branch or None)
        for branch in writer:
            index = _first_match(branch, reader) if reader_is_union else None
            if index is None and not (not reader_is_union and _matches(branch, reader)):
                index = -1  # legal per the spec: readable until this branch shows up
            cases.append((branch, index))
        if len(cases) == 2 and kind_of(cases[0][0]) == "null" and cases[0][1] not in (-1, None):
            # ["null", X], by far the most common union: two one-byte cases.
            self._emit(
                ind,
                "if data[pos] == 0:",
                f"    {target} = None",
                "    pos += 1",
                "elif data[pos] == 2:",
                "    pos += 1",
            )
            self._case(cases[1], reader, target, ind + 1)
            self._emit(
                ind,
                "else:",
                "    raise Malformed(f'index {_read_long(data, pos)[0]} out of range(2)')",
            )
            return
        chosen = self._var("i")
        self._index(len(cases), chosen, ind)
        for position, case in enumerate(cases):
            self._emit(ind, f"{'if' if position == 0 else 'elif'} {chosen} == {position}:")
            self._case(case, reader, target, ind + 1)

    def _case(self, case: tuple[Any, int | None], reader: Any, target: str, ind: int) -> None:
        branch, index = case
        if index == -1:
            message = f"union branch {_describe(branch)} is unknown to the reader schema"
            self._emit(ind, f"raise Malformed({message!r})")
        elif index is None:
            self.value(branch, reader, target, ind)
        else:
            self._branch(branch, reader, index, target, ind)

    def _map(self, writer: dict[str, Any], reader: dict[str, Any], target: str, ind: int) -> None:
        key, value = self._var("k"), self._var()
        self._emit(ind, f"{target} = {{}}")
        # Each entry takes at least a byte (its key's length), so a hostile
        # count runs off the end of the data instead of looping for long.
        with self._blocks(ind) as body:
            self._primitive("string", "string", key, body)
            self.value(writer["values"], reader["values"], value, body)
            self._emit(body, f"{target}[{key}] = {value}")

    def _array(self, writer: dict[str, Any], reader: dict[str, Any], target: str, ind: int) -> None:
        if _zero_width(writer["items"], set()):
            # A hostile item count (2**63 nulls) would loop without consuming input.
            raise SchemaError("arrays of items that take no bytes are not supported")
        item = self._var()
        self._emit(ind, f"{target} = []")
        with self._blocks(ind) as body:
            self.value(writer["items"], reader["items"], item, body)
            self._emit(body, f"{target}.append({item})")

    @contextmanager
    def _blocks(self, ind: int) -> Iterator[int]:
        """A map or array's blocks; code emitted inside, at the indent yielded, reads an item."""
        count = self._var("n")
        self._emit(
            ind,
            f"{count}, pos = _read_long(data, pos)",
            f"while {count}:",
            f"    if {count} < 0:  # a block with its size in bytes, which we do not need",
            f"        {count} = -{count}",
            "        _, pos = _read_long(data, pos)",
            f"    for _ in range({count}):",
        )
        yield ind + 2
        self._emit(ind + 1, f"{count}, pos = _read_long(data, pos)")
