"""The event contract and its codec: fingerprints, round trips, evolution, errors."""

from __future__ import annotations

import copy
import doctest
import io
import math
import uuid
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

import factflow_lineage.schemas
from factflow_lineage.errors import DecodeError, UnknownSchemaError
from factflow_lineage.schemas import (
    CURRENT_VERSION,
    RELEASED_VERSIONS,
    EventType,
    ExecutionStatus,
    decode,
    encode,
    encode_with,
    fingerprint,
    writer_schema,
)
from factflow_lineage.schemas._fingerprint import EMPTY, fingerprint64
from factflow_lineage.schemas._registry import strip_logical_types

NS = "io.factflow.lineage"


def _id() -> bytes:
    return uuid.uuid4().bytes


METADATA = {
    "none": None,
    "yes": True,
    "no": False,
    "zero": 0,
    "small": -1,
    "max": 2**63 - 1,
    "min": -(2**63),
    "ratio": 0.25,
    "big": 1.5e300,
    "inf": float("-inf"),
    "empty": "",
    "text": "Grüße, 世界 🚀",
    "": "empty key",
}


def _payloads(full: bool) -> dict[EventType, dict[str, Any]]:
    """One payload per event type: every optional field set (full) or null."""

    def opt(value: Any) -> Any:
        return value if full else None

    return {
        EventType.INVOCATION_STARTED: {
            "lineage_id": _id(),
            "execution_id": _id(),
            "root_id": _id(),
            "parent_id": opt(_id()),
            "route_id": "ingest",
            "adapter_name": "csv_reader",
            "input_hash": opt("sha256:" + "ab" * 32),
            "batch_id": opt(_id()),
            "input_key": opt("s3://bucket/2024/01/01/part-0001.csv"),
            "metadata": METADATA if full else {},
        },
        EventType.INVOCATION_COMPLETED: {
            "lineage_id": _id(),
            "execution_id": _id(),
            "output_hash": opt("x" * 300),  # a length that needs a two-byte varint
            "children": 2**31 - 1 if full else 0,
        },
        EventType.INVOCATION_FAILED: {
            "lineage_id": _id(),
            "execution_id": _id(),
            "error_class": "builtins.ValueError",
            "error_message": "bad row 17",
            "traceback": opt('Traceback (most recent call last):\n  File "x.py"'),
            "children": -(2**31) if full else 3,
        },
        EventType.INVOCATION_CANCELLED: {
            "lineage_id": _id(),
            "execution_id": _id(),
            "reason": opt("shutdown"),
            "children": 1,
        },
        EventType.EXECUTION_STARTED: {
            "execution_id": _id(),
            "pipeline": "daily-orders",
            "metadata": METADATA if full else {},
            "replay_of": opt(_id()),
            "replay_from_stage": opt("transform"),
        },
        EventType.EXECUTION_FINISHED: {
            "execution_id": _id(),
            "status": ExecutionStatus.FAILED if full else "COMPLETED",
            "error": opt("3 invocations failed"),
        },
    }


def _event(event_type: EventType, payload: dict[str, Any], sequence: int = 0) -> dict[str, Any]:
    return {
        "event_id": _id(),
        "event_type": event_type,
        "occurred_at": 1_700_000_000_123_456,
        "producer_id": _id(),
        "sequence": sequence,
        "payload": payload,
    }


ALL_EVENTS = [
    pytest.param(_event(t, p, sequence=i), id=f"{t.value}-{'full' if full else 'nulls'}")
    for full in (True, False)
    for i, (t, p) in enumerate(_payloads(full).items())
]


def _same(decoded: Any, expected: Any) -> bool:
    """Equality that also holds for NaN (float('nan') != itself)."""
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(decoded, float) and math.isnan(decoded)
    return bool(decoded == expected)


def test_the_package_docstring_example_runs() -> None:
    result = doctest.testmod(factflow_lineage.schemas)
    assert result.attempted >= 4
    assert result.failed == 0


# ---------------------------------------------------------------- fingerprints


def test_crc64_of_nothing_is_empty() -> None:
    assert EMPTY == 0xC15D213AA4D7A795
    assert fingerprint64(b"") == EMPTY


@pytest.mark.parametrize(
    ("canonical", "java_long"),
    [
        # Apache Avro, share/test/data/schema-tests.txt: fingerprints as Java longs.
        ('"null"', 7195948357588979594),
        ('"boolean"', -6970731678124411036),
        ('"int"', 8247732601305521295),
        ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
    ],
)
def test_crc64_matches_the_avro_test_vectors(canonical: str, java_long: int) -> None:
    assert fingerprint64(canonical.encode()) == java_long & 0xFFFF_FFFF_FFFF_FFFF


@pytest.mark.parametrize("version", RELEASED_VERSIONS)
def test_fingerprint_matches_fastavro_and_the_header(version: int) -> None:
    canonical = to_parsing_canonical_form(writer_schema(version))
    assert fingerprint(version) == bytes.fromhex(fastavro_fingerprint(canonical, "CRC-64-AVRO"))
    event = _event(EventType.INVOCATION_CANCELLED, _payloads(False)[EventType.INVOCATION_CANCELLED])
    data = encode_with(version, event)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fingerprint(version)


def test_every_version_has_its_own_fingerprint() -> None:
    assert tuple(range(1, CURRENT_VERSION + 1)) == RELEASED_VERSIONS
    assert CURRENT_VERSION >= 2
    assert len({fingerprint(v) for v in RELEASED_VERSIONS}) == len(RELEASED_VERSIONS)
    assert encode(ALL_EVENTS[0].values[0])[2:10] == fingerprint(CURRENT_VERSION)


@pytest.mark.parametrize("version", RELEASED_VERSIONS)
def test_stripping_logical_types_keeps_the_fingerprint(version: int) -> None:
    schema = writer_schema(version)
    occurred_at = next(f for f in schema["fields"] if f["name"] == "occurred_at")
    assert occurred_at["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    stripped = strip_logical_types(schema)
    assert "logicalType" not in repr(stripped)
    assert to_parsing_canonical_form(stripped) == to_parsing_canonical_form(schema)
    assert bytes.fromhex(
        fastavro_fingerprint(to_parsing_canonical_form(stripped), "CRC-64-AVRO")
    ) == fingerprint(version)


# ---------------------------------------------------------------- the contract


def _named(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The named type ``name`` defined anywhere inside ``schema``."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == name and node.get("type") in ("record", "enum", "fixed"):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert len(found) == 1, name
    return found[0]


def test_python_enums_are_the_avro_symbols() -> None:
    schema = writer_schema(CURRENT_VERSION)
    event_type = _named(schema, "EventType")
    assert [e.value for e in EventType] == event_type["symbols"]
    assert event_type["default"] == EventType.UNKNOWN
    status = _named(schema, "ExecutionStatus")
    assert [s.value for s in ExecutionStatus] == status["symbols"]
    assert _named(schema, "Uuid")["size"] == 16


def test_payload_union_has_one_record_per_event_type() -> None:
    schema = writer_schema(CURRENT_VERSION)
    payload = next(f for f in schema["fields"] if f["name"] == "payload")
    names = [branch["name"] for branch in payload["type"]]
    expected = [t.title().replace("_", "") for t in EventType if t is not EventType.UNKNOWN]
    assert names == expected


def test_v2_is_v1_plus_the_two_replay_fields_with_null_defaults() -> None:
    v1, v2 = writer_schema(1), writer_schema(2)
    started_v2 = _named(v2, "ExecutionStarted")
    added = started_v2["fields"][-2:]
    assert [(f["name"], f["type"], f["default"]) for f in added] == [
        ("replay_of", ["null", "Uuid"], None),
        ("replay_from_stage", ["null", "string"], None),
    ]
    without_docs = copy.deepcopy(v2)
    _named(without_docs, "ExecutionStarted")["fields"][-2:] = []
    without_docs["doc"] = v1["doc"]
    assert without_docs == v1


def test_every_field_is_documented() -> None:
    def fields(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, list):
            return [f for branch in node for f in fields(branch)]
        if isinstance(node, dict) and node.get("type") == "record":
            return node["fields"] + [f for field in node["fields"] for f in fields(field["type"])]
        return []

    for version in RELEASED_VERSIONS:
        undocumented = [f["name"] for f in fields(writer_schema(version)) if not f.get("doc")]
        assert undocumented == [], version


def test_writer_schema_is_a_copy() -> None:
    writer_schema(CURRENT_VERSION)["fields"].clear()
    assert writer_schema(CURRENT_VERSION)["fields"]


def test_unknown_version_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no released schema version 99"):
        writer_schema(99)
    with pytest.raises(ValueError, match="no released schema version 0"):
        encode_with(0, ALL_EVENTS[0].values[0])


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("event", ALL_EVENTS)
def test_round_trip(event: dict[str, Any]) -> None:
    decoded = decode(encode(event))
    assert decoded == event
    assert type(decoded["event_type"]) is str
    assert type(decoded["occurred_at"]) is int
    assert type(decoded["event_id"]) is bytes


@pytest.mark.parametrize("event", ALL_EVENTS)
def test_bytes_match_fastavro(event: dict[str, Any]) -> None:
    """fastavro, an independent implementation, as the oracle of our codec."""
    schema = fastavro.parse_schema(strip_logical_types(writer_schema(CURRENT_VERSION)))
    record = f"{NS}.{event['event_type'].title().replace('_', '')}"
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, {**event, "payload": (record, event["payload"])})
    data = encode(event)
    assert data[10:] == out.getvalue()
    read = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema, None)
    assert read == event


def test_nan_round_trips() -> None:
    payload = _payloads(False)[EventType.EXECUTION_STARTED]
    payload["metadata"] = {"nan": float("nan")}
    decoded = decode(encode(_event(EventType.EXECUTION_STARTED, payload)))
    assert _same(decoded["payload"]["metadata"]["nan"], float("nan"))


@pytest.mark.parametrize("event", ALL_EVENTS)
def test_v1_events_decode_into_the_current_shape(event: dict[str, Any]) -> None:
    data = encode_with(1, event)
    assert data[2:10] == fingerprint(1)
    decoded = decode(data)
    if event["event_type"] == EventType.EXECUTION_STARTED:
        # v1 has no replay fields: they are dropped on write, defaulted on read.
        assert decoded["payload"]["replay_of"] is None
        assert decoded["payload"]["replay_from_stage"] is None
        expected = {**event, "payload": {**event["payload"], "replay_of": None}}
        expected["payload"]["replay_from_stage"] = None
        assert decoded == expected
    else:
        assert decoded == event


def test_v1_decoding_matches_fastavro_resolution() -> None:
    event = _event(EventType.EXECUTION_STARTED, _payloads(True)[EventType.EXECUTION_STARTED])
    v1 = fastavro.parse_schema(strip_logical_types(writer_schema(1)))
    v2 = fastavro.parse_schema(strip_logical_types(writer_schema(2)))
    data = encode_with(1, event)
    oracle = fastavro.schemaless_reader(io.BytesIO(data[10:]), v1, v2)
    assert decode(data) == oracle


def test_optional_fields_with_defaults_may_be_left_out() -> None:
    payload = _payloads(True)[EventType.EXECUTION_STARTED]
    del payload["replay_of"], payload["replay_from_stage"]
    decoded = decode(encode(_event(EventType.EXECUTION_STARTED, payload)))
    assert decoded["payload"]["replay_of"] is None
    assert decoded["payload"]["replay_from_stage"] is None


def test_accepts_bytearray_and_memoryview() -> None:
    event = ALL_EVENTS[0].values[0]
    data = encode(event)
    assert decode(bytearray(data)) == event
    assert decode(memoryview(data)) == event


# ---------------------------------------------------------------- decode errors


def _valid() -> bytes:
    return encode(ALL_EVENTS[0].values[0])


def test_unknown_fingerprint() -> None:
    data = b"\xc3\x01" + b"\x00" * 8 + _valid()[10:]
    with pytest.raises(UnknownSchemaError) as info:
        decode(data)
    assert info.value.fingerprint == b"\x00" * 8


@pytest.mark.parametrize(
    "data", [b"", b"\xc3", b"\x00\x01" + bytes(8), b"\xc3\x02" + bytes(20), b"Obj\x01"]
)
def test_wrong_marker(data: bytes) -> None:
    with pytest.raises(DecodeError, match="not an Avro single-object message") as info:
        decode(data)
    assert not isinstance(info.value, UnknownSchemaError)


def test_every_truncation_is_a_decode_error() -> None:
    for event in (p.values[0] for p in ALL_EVENTS):
        data = encode(event)
        for size in range(2, len(data)):
            with pytest.raises(DecodeError, match="truncated"):
                decode(data[:size])


def test_trailing_bytes() -> None:
    with pytest.raises(DecodeError, match="1 unexpected bytes"):
        decode(_valid() + b"\x00")


def test_not_bytes() -> None:
    with pytest.raises(DecodeError, match="expected bytes, got NoneType"):
        decode(None)  # type: ignore[arg-type]


def _finished(status_byte: int | None = None, event_type_byte: int | None = None) -> bytes:
    """An EXECUTION_FINISHED message, optionally with a raw enum index byte replaced."""
    payload = _payloads(False)[EventType.EXECUTION_FINISHED]
    data = bytearray(encode(_event(EventType.EXECUTION_FINISHED, payload)))
    # header 10 | event_id 16 | event_type 1 | occurred_at 8 | producer_id 16 |
    # sequence 1 | payload branch 1 | execution_id 16 | status 1 | error 1
    assert data[26] == 2 * 6 and data[-2] == 0  # EXECUTION_FINISHED, status COMPLETED
    if event_type_byte is not None:
        data[26] = event_type_byte
    if status_byte is not None:
        data[-2] = status_byte
    return bytes(data)


def test_the_offsets_in_finished_are_right() -> None:
    assert decode(_finished(status_byte=2))["payload"]["status"] == "FAILED"


@pytest.mark.parametrize("index_byte", [2 * 3, 2 * 63, 1, 0x7F])
def test_invalid_enum_index(index_byte: int) -> None:
    with pytest.raises(DecodeError, match="index"):
        decode(_finished(status_byte=index_byte))


def test_event_type_must_match_the_payload() -> None:
    with pytest.raises(DecodeError, match=r"INVOCATION_STARTED with a .*ExecutionFinished"):
        decode(_finished(event_type_byte=2 * 1))
    with pytest.raises(DecodeError, match="UNKNOWN"):
        decode(_finished(event_type_byte=0))


def test_invalid_union_index() -> None:
    data = bytearray(_finished())
    assert data[52] == 2 * 5  # ExecutionFinished, branch 5 of 0..5
    data[52] = 2 * 6
    with pytest.raises(DecodeError, match="out of range"):
        decode(bytes(data))


def test_invalid_utf8() -> None:
    payload = _payloads(False)[EventType.EXECUTION_FINISHED]
    payload["error"] = "ab"
    data = encode(_event(EventType.EXECUTION_FINISHED, payload))
    assert data.endswith(b"ab")
    with pytest.raises(DecodeError, match="utf-8"):
        decode(data[:-2] + b"\xff\xfe")


@pytest.mark.parametrize(
    ("varint", "message"),
    [
        (b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
        (b"\xff" * 9 + b"\x7f", "varint does not fit a long"),
    ],
)
def test_oversized_varint(varint: bytes, message: str) -> None:
    data = _finished()
    assert decode(data[:51] + b"\xff" * 9 + b"\x01" + data[52:])["sequence"] == -(2**63)
    with pytest.raises(DecodeError, match=message):
        decode(data[:51] + varint + data[52:])  # as the sequence (offset 51)


def test_invalid_boolean() -> None:
    payload = _payloads(False)[EventType.EXECUTION_STARTED]
    payload["metadata"] = {"k": True}
    data = encode(_event(EventType.EXECUTION_STARTED, payload))
    assert data.endswith(b"\x02k\x02\x01\x00\x00\x00")  # k, branch boolean, True, end, 2 nulls
    with pytest.raises(DecodeError, match="boolean byte 2"):
        decode(data[:-4] + b"\x02" + data[-3:])


# ---------------------------------------------------------------- encode errors


def _bad(**payload_changes: Any) -> dict[str, Any]:
    payload = _payloads(True)[EventType.INVOCATION_STARTED]
    for key, value in payload_changes.items():
        if value is KeyError:
            del payload[key]
        else:
            payload[key] = value
    return _event(EventType.INVOCATION_STARTED, payload)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (_bad(route_id=KeyError), "payload.route_id: missing"),
        (_bad(route_id=7), "payload.route_id: .*expected str, got int"),
        (_bad(lineage_id=uuid.uuid4()), "payload.lineage_id: .*expected 16 bytes"),
        (_bad(parent_id=b"short"), "payload.parent_id: .*expected 16 bytes"),
        (_bad(metadata={"k": [1]}), "payload.metadata: .*no union branch for list"),
        (_bad(metadata={"k": 2**63}), "payload.metadata: .*does not fit a long"),
        (_bad(input_key="\ud800"), "payload.input_key: .*surrogate"),
        ({**_bad(), "event_type": "UNKNOWN"}, "event_type: 'UNKNOWN' has no payload record"),
        ({**_bad(), "event_type": "NOPE"}, "event_type: 'NOPE' has no payload record"),
        ({**_bad(), "sequence": 1.5}, "sequence: "),
        (
            _event(
                EventType.INVOCATION_CANCELLED,
                {**_payloads(False)[EventType.INVOCATION_CANCELLED], "children": 2**31},
            ),
            "payload.children: .*does not fit an int",
        ),
        ({**_bad(), "occurred_at": None}, "occurred_at: "),
        ({k: v for k, v in _bad().items() if k != "event_id"}, "event_id: missing"),
        ({k: v for k, v in _bad().items() if k != "payload"}, "payload: missing"),
    ],
)
def test_invalid_events_are_value_errors(event: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^invalid lineage event: {message}"):
        encode(event)


def test_payload_of_the_wrong_event_type_is_refused() -> None:
    event = _bad()
    event["event_type"] = EventType.INVOCATION_COMPLETED
    with pytest.raises(ValueError, match=r"payload\.output_hash: missing"):
        encode(event)
