"""Content hashes: the documented algorithm, stable across releases."""

from __future__ import annotations

import hashlib

import pytest

from factflow_lineage.producer import content_hash
from factflow_lineage.producer._hashing import OutputHasher, canonical_json, combine


def test_known_vectors_pin_the_algorithm() -> None:
    # BLAKE2b with a 16-byte digest (RFC 7693); changing the algorithm breaks
    # every stored hash, so these values are fixed, not recomputed.
    assert content_hash(b"") == "blake2b128:cae66941d9efbd404e4d88758ea67670"
    assert content_hash(b"abc") == "blake2b128:cf4ab791c62b8d2b2109c90275287816"


def test_str_is_hashed_as_utf8() -> None:
    assert content_hash("abc") == content_hash(b"abc")
    assert content_hash("é€") == content_hash("é€".encode())
    assert content_hash(bytearray(b"abc")) == content_hash(memoryview(b"abc"))


def test_dicts_hash_as_canonical_json_whatever_the_key_order() -> None:
    a = {"b": 1, "a": ["x", {"d": None, "c": 2.5}], "é": True}
    b = {"é": True, "a": ["x", {"c": 2.5, "d": None}], "b": 1}
    assert content_hash(a) == content_hash(b)
    text = '{"a":["x",{"c":2.5,"d":null}],"b":1,"é":true}'
    assert canonical_json(a) == text
    assert content_hash(a) == content_hash(text)
    expected = hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
    assert content_hash(a) == f"blake2b128:{expected}"


def test_lists_and_tuples_hash_alike_and_order_matters() -> None:
    assert content_hash([1, 2]) == content_hash((1, 2))
    assert content_hash([1, 2]) != content_hash([2, 1])


def test_different_content_different_hash() -> None:
    assert content_hash(b"a") != content_hash(b"b")
    assert content_hash({"a": 1}) != content_hash({"a": "1"})


@pytest.mark.parametrize("value", [object(), 12, 1.5, None, {"a": object()}])
def test_unhashable_types_raise_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        content_hash(value)  # type: ignore[arg-type]


def test_circular_structures_raise_type_error() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(TypeError):
        content_hash(loop)


def test_output_hash_is_blake2b_over_the_concatenated_output_hashes() -> None:
    hashes = [content_hash(b"one"), content_hash(b"two")]
    digest = hashlib.blake2b("".join(hashes).encode("ascii"), digest_size=16).hexdigest()
    assert combine(hashes) == f"blake2b128:{digest}"
    assert combine(list(reversed(hashes))) != combine(hashes)
    assert combine([]) is None
    running = OutputHasher()
    for value in hashes:
        running.add(value)
    assert running.hexdigest() == combine(hashes)
