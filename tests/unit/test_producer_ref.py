"""LineageRef: the small, serialisable pointer one stage hands the next."""

from __future__ import annotations

import pickle
import uuid

import pytest

from factflow_lineage.producer import LineageRef
from factflow_lineage.producer._ref import parse_parent

A = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
B = uuid.UUID("2c8c0e0c-7d3f-4c39-9a61-5c8e4f3b2a10")


def test_fields_and_header_round_trip() -> None:
    ref = LineageRef(A, B)
    assert (ref.lineage_id, ref.root_id) == (A, B)
    header = ref.to_header()
    assert header == f"v1:{A.hex}:{B.hex}"
    assert header.isascii() and len(header) == 68
    assert LineageRef.from_header(header) == ref
    assert LineageRef.from_header(header.encode("ascii")) == ref


def test_bytes_round_trip() -> None:
    ref = LineageRef(A, B)
    assert bytes(ref) == A.bytes + B.bytes
    assert LineageRef.from_bytes(bytes(ref)) == ref
    with pytest.raises(ValueError):
        LineageRef.from_bytes(b"short")


@pytest.mark.parametrize(
    "header",
    ["", "v1:", f"v2:{A.hex}:{B.hex}", f"v1:{A.hex}", f"v1:{A.hex}:{B.hex}:x", "v1:zz:yy", b"\xff"],
)
def test_malformed_headers_raise_value_error(header: str | bytes) -> None:
    with pytest.raises(ValueError):
        LineageRef.from_header(header)


def test_immutable_hashable_picklable() -> None:
    ref = LineageRef(A, B)
    with pytest.raises(AttributeError):
        ref.x = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        ref._lineage = b""  # type: ignore[misc]
    assert {ref: 1}[LineageRef(A, B)] == 1
    assert ref != LineageRef(B, A)
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert str(A) in repr(ref)


def test_parent_accepts_ref_header_and_bytes() -> None:
    ref = LineageRef(A, B)
    expected = (A.bytes, B.bytes)
    assert parse_parent(ref) == expected
    assert parse_parent(ref.to_header()) == expected
    assert parse_parent(ref.to_header().encode()) == expected
    assert parse_parent(bytes(ref)) == expected
    assert parse_parent(None) is None
    with pytest.raises(TypeError):
        parse_parent(42)
    with pytest.raises(ValueError):
        parse_parent("not a header")
