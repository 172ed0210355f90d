"""Making user data fit the contract: truncation, metadata coercion, ids."""

from __future__ import annotations

import json
import uuid

import pytest

from factflow_lineage.producer._events import (
    coerce_metadata,
    coerce_value,
    error_class,
    shrink_metadata,
    truncate,
    valid_text,
)
from factflow_lineage.producer._ids import new_random_id, new_time_id, parse_id


def test_short_text_is_untouched() -> None:
    assert truncate("hello", 100) == "hello"
    assert truncate("x" * 100, 100) == "x" * 100
    assert truncate("€" * 33, 100) == "€" * 33  # 99 bytes


def test_long_text_keeps_head_and_tail_and_says_how_much_was_cut() -> None:
    text = "HEAD" + "m" * 1_000_000 + "TAIL"
    out = truncate(text, 16 * 1024)
    assert len(out.encode()) <= 16 * 1024
    assert out.startswith("HEAD") and out.endswith("TAIL")
    head, rest = out.split("\n[... ", 1)
    cut, tail = rest.split(" bytes cut ...]\n", 1)
    # What is kept plus what the marker says was cut is the whole text.
    assert len(head) + int(cut) + len(tail) == len(text)
    assert len(head) > 4000 and len(tail) > 4000


def test_truncation_never_splits_a_multibyte_character() -> None:
    text = "é€😀" * 10_000
    out = truncate(text, 1000)
    assert len(out.encode("utf-8")) <= 1000
    out.encode("utf-8")  # valid text, strict
    assert out[0] == "é" and out[-1] == "😀"


def test_valid_text_replaces_lone_surrogates() -> None:
    out = valid_text("a\udcffb")
    assert out == "a\ufffdb"  # U+FFFD, the policy of factflow_lineage._repair


def test_scalar_metadata_is_kept_as_is() -> None:
    meta = {"n": 3, "f": 1.5, "b": True, "s": "x", "none": None}
    assert coerce_metadata(meta) == meta


def test_containers_become_canonical_json() -> None:
    out = coerce_metadata({"nested": {"b": [1, 2], "a": {"x": None}}, "t": (1, "a")})
    assert out["nested"] == '{"a":{"x":null},"b":[1,2]}'
    assert json.loads(out["t"]) == [1, "a"]


def test_objects_huge_ints_bytes_and_keys_become_text() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    out = coerce_metadata({"o": Thing(), "big": 2**80, 7: "seven", "raw": b"\x01\x02"})
    assert out == {"o": "a thing", "big": str(2**80), "7": "seven", "raw": "0102"}
    assert all(isinstance(k, str) for k in out)


def test_broken_str_does_not_break_coercion() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

        def __repr__(self) -> str:
            return "<Broken>"

    assert coerce_value(Broken()) == "<Broken>"
    assert coerce_metadata("just a string") == {"metadata": "just a string"}
    assert coerce_metadata(None) == {}


def test_shrink_metadata_cuts_long_values_then_gives_up_gracefully() -> None:
    out = shrink_metadata({"a": "x" * 100_000, "n": 1}, budget=10_000)
    assert len(out["a"].encode()) <= 1024 and out["n"] == 1
    many = {f"k{i}": "v" * 1000 for i in range(1000)}
    assert list(shrink_metadata(many, budget=10_000)) == ["factflow.truncated"]


def test_error_class_is_qualified_unless_builtin() -> None:
    assert error_class(ValueError("x")) == "ValueError"
    assert error_class(json.JSONDecodeError("m", "d", 0)) == "json.decoder.JSONDecodeError"


def test_time_ids_are_uuid7_and_sort_by_time() -> None:
    ids = [new_time_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(uuid.UUID(bytes=i).version == 7 for i in ids)
    assert all(uuid.UUID(bytes=i).variant == uuid.RFC_4122 for i in ids)
    # The first 6 bytes are Unix milliseconds: never decreasing.
    stamps = [int.from_bytes(i[:6]) for i in ids]
    assert stamps == sorted(stamps)


def test_random_ids_are_uuid4() -> None:
    ids = {new_random_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert {uuid.UUID(bytes=i).version for i in ids} == {4}


def test_parse_id_accepts_uuid_str_and_bytes_and_derives_the_rest() -> None:
    u = uuid.uuid4()
    assert parse_id(u) == (u.bytes, False)
    assert parse_id(str(u)) == (u.bytes, False)
    assert parse_id(u.hex) == (u.bytes, False)
    assert parse_id(u.bytes) == (u.bytes, False)
    derived, coerced = parse_id("run-42")
    assert coerced and len(derived) == 16
    assert parse_id("run-42") == (derived, True)  # stable


@pytest.mark.parametrize("limit", [256, 1000, 4096])
def test_truncate_respects_every_limit(limit: int) -> None:
    assert len(truncate("ab€" * 5000, limit).encode()) <= limit
