"""The generic Avro codec under the lineage schemas, on a schema that uses every
type and every kind of evolution it supports, with fastavro as the oracle."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from factflow_lineage.schemas._avro_codegen import generate_reader
from factflow_lineage.schemas._avro_read import compile_reader
from factflow_lineage.schemas._avro_schema import SchemaError
from factflow_lineage.schemas._avro_write import compile_writer

COLOR = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}
FOUR = {"type": "fixed", "name": "Four", "size": 4}
NODE = {
    "type": "record",
    "name": "Node",
    "fields": [{"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"]}],
}

WRITER: dict[str, Any] = {
    "type": "record",
    "name": "Rec",
    "namespace": "t",
    "fields": [
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "b", "type": "boolean"},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": "string"},
        {"name": "e", "type": COLOR},
        {"name": "fx", "type": FOUR},
        {"name": "arr", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
        {"name": "u", "type": ["null", "int", "string", "Four"]},
        {"name": "dropped", "type": "string"},
        {
            "name": "named",
            "type": [
                {"type": "record", "name": "A", "fields": [{"name": "x", "type": "int"}]},
                {"type": "record", "name": "B", "fields": [{"name": "y", "type": "Color"}]},
            ],
        },
        {"name": "chain", "type": NODE},
    ],
}

# Every kind of change Avro resolution allows: promotions, a dropped field, added
# fields with defaults, an enum that lost a symbol (-> default), reordered union.
READER: dict[str, Any] = {
    "type": "record",
    "name": "Rec",
    "namespace": "t",
    "fields": [
        {"name": "i", "type": "long"},
        {"name": "l", "type": "double"},
        {"name": "f", "type": "double"},
        {"name": "d", "type": "double"},
        {"name": "b", "type": "boolean"},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": "bytes"},
        {
            "name": "e",
            "type": {
                "type": "enum",
                "name": "Color",
                "symbols": ["GREEN", "RED", "YELLOW"],
                "default": "RED",
            },
        },
        {"name": "fx", "type": FOUR},
        {"name": "arr", "type": {"type": "array", "items": "double"}},
        {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
        {"name": "u", "type": ["null", "long", "string", "Four", "double"]},
        {
            "name": "named",
            "type": [
                {"type": "record", "name": "B", "fields": [{"name": "y", "type": "Color"}]},
                {"type": "record", "name": "A", "fields": [{"name": "x", "type": "long"}]},
            ],
        },
        {"name": "chain", "type": NODE},
        {"name": "added_map", "type": {"type": "map", "values": "int"}, "default": {"a": 1}},
        {"name": "added_opt", "type": ["null", "string"], "default": None},
        {"name": "added_bytes", "type": "bytes", "default": "\u00ff\u0000"},
        {"name": "added_union", "type": ["bytes", "null"], "default": "\u0001"},
    ],
}

ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
colors = st.sampled_from(COLOR["symbols"])
chains = st.recursive(
    st.builds(lambda v: {"v": v, "next": None}, ints),
    lambda inner: st.builds(lambda v, n: {"v": v, "next": n}, ints, inner),
    max_leaves=5,
)
records = st.fixed_dictionaries(
    {
        "i": ints,
        "l": longs,
        "f": st.floats(width=32, allow_nan=False),
        "d": st.floats(allow_nan=False),
        "b": st.booleans(),
        "by": st.binary(max_size=100),
        "s": st.text(max_size=100),
        "e": colors,
        "fx": st.binary(min_size=4, max_size=4),
        "arr": st.lists(longs, max_size=5),
        "m": st.dictionaries(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=3)),
        "u": st.none() | ints | st.text() | st.binary(min_size=4, max_size=4),
        "dropped": st.text(),
        "named": st.tuples(st.just("t.A"), st.fixed_dictionaries({"x": ints}))
        | st.tuples(st.just("t.B"), st.fixed_dictionaries({"y": colors})),
        "chain": chains,
    }
)

WRITE = compile_writer(WRITER)
# Both readers: the closures (the reference) and the generated code the codec uses.
COMPILERS = pytest.mark.parametrize(
    "compile_", [compile_reader, generate_reader], ids=["closures", "generated"]
)
READ_SAME = {c: c(WRITER, WRITER) for c in (compile_reader, generate_reader)}
READ_EVOLVED = {c: c(WRITER, READER) for c in (compile_reader, generate_reader)}
FAST_WRITER = fastavro.parse_schema(WRITER)
FAST_READER = fastavro.parse_schema(READER)


def _read(read: Any, data: bytes) -> Any:
    value, end = read(data, 0)
    assert end == len(data)
    return value


def _fastavro_read(data: bytes, reader: Any) -> Any:
    return fastavro.schemaless_reader(
        io.BytesIO(data),
        FAST_WRITER,
        reader,
        return_record_name=True,
        return_record_name_override=True,
    )


@COMPILERS
@given(record=records)
def test_writes_what_fastavro_writes_and_reads_it_back(
    compile_: Any, record: dict[str, Any]
) -> None:
    buf = bytearray()
    WRITE(record, buf)
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, FAST_WRITER, record)
    assert bytes(buf) == expected.getvalue()
    assert _read(READ_SAME[compile_], bytes(buf)) == _fastavro_read(bytes(buf), None) == record


@COMPILERS
@given(record=records)
def test_resolves_like_fastavro(compile_: Any, record: dict[str, Any]) -> None:
    buf = bytearray()
    WRITE(record, buf)
    evolved = _read(READ_EVOLVED[compile_], bytes(buf))
    oracle = _fastavro_read(bytes(buf), FAST_READER)
    # fastavro hands a bytes default out as the JSON string; the spec (and we) map
    # its code points 0-255 to bytes.
    assert oracle.pop("added_bytes") == "\u00ff\u0000"
    assert evolved.pop("added_bytes") == b"\xff\x00"
    assert oracle.pop("added_union") == "\u0001"
    assert evolved.pop("added_union") == b"\x01"  # a union's default is its first branch's
    assert evolved == oracle
    assert "dropped" not in evolved
    assert evolved["e"] == ("RED" if record["e"] == "BLUE" else record["e"])


@COMPILERS
def test_mutable_defaults_are_not_shared(compile_: Any) -> None:
    buf = bytearray()
    WRITE(
        {
            **dict.fromkeys(["i", "l", "f", "d"], 0),
            **{"b": True, "by": b"", "s": "", "e": "RED", "fx": b"1234", "arr": [], "m": {}},
            **{"u": None, "dropped": "", "named": ("A", {"x": 1}), "chain": {"v": 1, "next": None}},
        },
        buf,
    )
    first = _read(READ_EVOLVED[compile_], bytes(buf))
    first["added_map"]["b"] = 2
    assert _read(READ_EVOLVED[compile_], bytes(buf))["added_map"] == {"a": 1}


@COMPILERS
def test_huge_array_counts_run_off_the_end_instead_of_looping(compile_: Any) -> None:
    read = compile_({"type": "array", "items": "long"}, {"type": "array", "items": "long"})
    assert read(b"\x06\x02\x04\x06\x00", 0) == ([1, 2, 3], 5)
    with pytest.raises(IndexError):
        read(b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01\x02", 0)  # 2**62 - 1 items


@pytest.mark.parametrize(
    ("writer", "reader", "message"),
    [
        (
            {"type": "record", "name": "R", "fields": []},
            {"type": "record", "name": "R", "fields": [{"name": "x", "type": "int"}]},
            "R.x: not written by the writer, no default",
        ),
        (
            {"type": "fixed", "name": "F", "size": 4},
            {"type": "fixed", "name": "F", "size": 5},
            "size",
        ),
        ("long", "int", "cannot read writer long as int"),
        (
            {"type": "array", "items": "null"},
            {"type": "array", "items": "null"},
            "items that take no bytes",
        ),
        ("string", ["null", "int"], "matches no branch"),
        (
            {"type": "record", "name": "R", "aliases": ["Q"], "fields": []},
            {"type": "record", "name": "R", "fields": []},
            "aliases are not supported",
        ),
    ],
)
@COMPILERS
def test_unreadable_schemas_fail_at_compile_time(
    compile_: Any, writer: Any, reader: Any, message: str
) -> None:
    with pytest.raises(SchemaError, match=message):
        compile_(writer, reader)


@COMPILERS
@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 127, 128, 8191, 8192])
def test_lengths_around_the_varint_boundaries(compile_: Any, size: int) -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "s", "type": "string"}, {"name": "b", "type": "bytes"}],
    }
    record = {"s": "x" * size, "b": b"y" * size}
    buf = bytearray()
    compile_writer(schema)(record, buf)
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, fastavro.parse_schema(schema), record)
    assert bytes(buf) == expected.getvalue()
    assert _read(compile_(schema, schema), bytes(buf)) == record


@COMPILERS
def test_reads_blocks_with_byte_sizes(compile_: Any) -> None:
    """Other writers may split a map or array into blocks with a negative count
    followed by the block's size in bytes; we only ever write one plain block."""
    schema = {"type": "map", "values": {"type": "array", "items": "long"}}
    # map block of 1 (count -1, size 5) | "a" | array blocks [1] (count -1, size 1), [2] | end
    data = b"\x01\x0a\x02a\x01\x02\x02\x02\x04\x00\x00"
    expected = {"a": [1, 2]}
    assert (
        fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(schema), None)
        == expected
    )
    assert _read(compile_(schema, schema), data) == expected
