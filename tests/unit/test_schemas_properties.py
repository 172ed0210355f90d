"""Property tests of the codec: any valid event round-trips exactly and byte for
byte like fastavro; no input makes decode raise anything but DecodeError."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import fastavro
from fastavro.schema import fingerprint as fastavro_fingerprint
from hypothesis import given
from hypothesis import strategies as st

from factflow_lineage.errors import DecodeError
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
from factflow_lineage.schemas._fingerprint import fingerprint_bytes
from factflow_lineage.schemas._registry import strip_logical_types

NS = "io.factflow.lineage"
FASTAVRO = {
    v: fastavro.parse_schema(strip_logical_types(writer_schema(v))) for v in RELEASED_VERSIONS
}

uuids = st.binary(min_size=16, max_size=16)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
optional_text = st.none() | st.text()
optional_uuid = st.none() | uuids
scalars = st.none() | st.booleans() | longs | st.floats(allow_nan=False) | st.text()
metadata = st.dictionaries(st.text(), scalars, max_size=6)

PAYLOADS: dict[EventType, st.SearchStrategy[dict[str, Any]]] = {
    EventType.INVOCATION_STARTED: st.fixed_dictionaries(
        {
            "lineage_id": uuids,
            "execution_id": uuids,
            "root_id": uuids,
            "parent_id": optional_uuid,
            "route_id": st.text(),
            "adapter_name": st.text(),
            "input_hash": optional_text,
            "batch_id": optional_uuid,
            "input_key": optional_text,
            "metadata": metadata,
        }
    ),
    EventType.INVOCATION_COMPLETED: st.fixed_dictionaries(
        {"lineage_id": uuids, "execution_id": uuids, "output_hash": optional_text, "children": ints}
    ),
    EventType.INVOCATION_FAILED: st.fixed_dictionaries(
        {
            "lineage_id": uuids,
            "execution_id": uuids,
            "error_class": st.text(),
            "error_message": st.text(),
            "traceback": optional_text,
            "children": ints,
        }
    ),
    EventType.INVOCATION_CANCELLED: st.fixed_dictionaries(
        {"lineage_id": uuids, "execution_id": uuids, "reason": optional_text, "children": ints}
    ),
    EventType.EXECUTION_STARTED: st.fixed_dictionaries(
        {
            "execution_id": uuids,
            "pipeline": st.text(),
            "metadata": metadata,
            "replay_of": optional_uuid,
            "replay_from_stage": optional_text,
        }
    ),
    EventType.EXECUTION_FINISHED: st.fixed_dictionaries(
        {
            "execution_id": uuids,
            "status": st.sampled_from(ExecutionStatus),
            "error": optional_text,
        }
    ),
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event_type = draw(st.sampled_from(list(PAYLOADS)))
    return {
        "event_id": draw(uuids),
        "event_type": event_type,
        "occurred_at": draw(longs),
        "producer_id": draw(uuids),
        "sequence": draw(longs),
        "payload": draw(PAYLOADS[event_type]),
    }


def _fastavro_body(version: int, event: dict[str, Any]) -> bytes:
    record = f"{NS}.{event['event_type'].title().replace('_', '')}"
    out = io.BytesIO()
    fastavro.schemaless_writer(
        out, FASTAVRO[version], {**event, "payload": (record, event["payload"])}
    )
    return out.getvalue()


@given(events())
def test_valid_events_round_trip_exactly(event: dict[str, Any]) -> None:
    data = encode(event)
    assert decode(data) == event
    assert data[10:] == _fastavro_body(CURRENT_VERSION, event)


@given(events())
def test_every_released_writer_is_readable(event: dict[str, Any]) -> None:
    for version in RELEASED_VERSIONS:
        data = encode_with(version, event)
        assert data[10:] == _fastavro_body(version, event)
        oracle = fastavro.schemaless_reader(
            io.BytesIO(data[10:]), FASTAVRO[version], FASTAVRO[CURRENT_VERSION]
        )
        assert decode(data) == oracle


@given(st.text())
def test_crc64_matches_fastavro(text: str) -> None:
    assert fingerprint_bytes(text) == bytes.fromhex(fastavro_fingerprint(text, "CRC-64-AVRO"))


def _decode_or_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    _decode_or_decode_error(data)


@given(st.sampled_from(RELEASED_VERSIONS), st.binary(max_size=400))
def test_random_bodies_only_raise_decode_error(version: int, body: bytes) -> None:
    _decode_or_decode_error(b"\xc3\x01" + fingerprint(version) + body)


@given(events(), st.data())
def test_corrupted_events_only_raise_decode_error(
    event: dict[str, Any], data: st.DataObject
) -> None:
    message = bytearray(encode(event))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=10, max_value=len(message) - 1))
        message[index] = data.draw(st.integers(min_value=0, max_value=255))
    _decode_or_decode_error(bytes(message))
