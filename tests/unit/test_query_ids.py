"""What operators type: ids and prefixes, page cursors, --since."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from factflow_lineage.cli import exit_code
from factflow_lineage.errors import UsageError
from factflow_lineage.query._ids import (
    Cursor,
    decode_cursor,
    encode_cursor,
    parse_id,
    parse_since,
)

FULL = uuid.UUID("0123abcd-ef45-4678-9abc-def012345678")


@pytest.mark.parametrize(
    "typed",
    [
        str(FULL),
        str(FULL).upper(),
        FULL.hex,
        f"  {FULL}  ",
        f"urn:uuid:{FULL}",
    ],
)
def test_a_full_uuid_in_any_usual_spelling_is_exact(typed: str) -> None:
    pattern = parse_id(typed)
    assert pattern.exact == FULL
    assert pattern.low == pattern.high == FULL


@pytest.mark.parametrize("typed", ["0123abcd", "0123ABCD", "0123abcd-ef", "0123abcdef45"])
def test_a_prefix_covers_exactly_the_uuids_that_start_with_it(typed: str) -> None:
    pattern = parse_id(typed)
    digits = typed.lower().replace("-", "")
    assert pattern.exact is None
    assert pattern.low.hex == digits.ljust(32, "0")
    assert pattern.high.hex == digits.ljust(32, "f")
    assert pattern.low <= FULL <= pattern.high


@given(st.uuids(), st.integers(min_value=8, max_value=36))
def test_every_uuid_is_inside_the_range_of_each_of_its_prefixes(u: uuid.UUID, n: int) -> None:
    # The same prefix typed with and without dashes, cut anywhere.
    for typed in (u.hex[:n], str(u)[:n].rstrip("-")):
        pattern = parse_id(typed)
        assert pattern.low <= u <= pattern.high
        assert (pattern.exact == u) == (len(typed.replace("-", "")) == 32)


def test_a_prefix_shorter_than_eight_digits_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="too short: give at least 8 hex characters") as e:
        parse_id("0123abc", what="lineage id")
    assert exit_code(e.value) == 2


@pytest.mark.parametrize(
    "typed",
    ["", "   ", "not-a-uuid", "0123abcz", "0123abcd-ef45-4678-9abc-def0123456789", "01-23abcdef"],
)
def test_malformed_ids_are_usage_errors_that_quote_the_input(typed: str) -> None:
    with pytest.raises(UsageError, match="malformed lineage id"):
        parse_id(typed, what="lineage id")


def test_cursor_round_trip_keeps_microseconds_and_time_zone() -> None:
    at = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    cursor = Cursor(kind="lineage", at=at, id=FULL)
    token = encode_cursor(cursor)
    assert "=" not in token and "/" not in token and "+" not in token  # URL-safe as is
    assert decode_cursor(token, kind="lineage") == cursor


def test_cursor_for_the_rows_without_a_time_round_trips() -> None:
    cursor = Cursor(kind="lineage", at=None, id=FULL)
    assert decode_cursor(encode_cursor(cursor), kind="lineage") == cursor


def test_a_cursor_of_another_listing_is_refused() -> None:
    token = encode_cursor(Cursor(kind="executions", at=None, id=FULL))
    with pytest.raises(UsageError, match="another listing"):
        decode_cursor(token, kind="lineage")


@pytest.mark.parametrize("token", ["", "abc", "!!!!", "e30", "WyJhIl0", "WzEsMiwzXQ"])
def test_garbage_cursors_are_usage_errors(token: str) -> None:
    with pytest.raises(UsageError, match="invalid cursor"):
        decode_cursor(token, kind="lineage")


NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("typed", "ago"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        (" 2D ", timedelta(days=2)),
    ],
)
def test_since_ages_count_back_from_now(typed: str, ago: timedelta) -> None:
    assert parse_since(typed, now=NOW) == NOW - ago


def test_since_iso_times_keep_their_offset_and_naive_ones_are_utc() -> None:
    assert parse_since("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("2024-05-01T14:00:00+02:00").utcoffset() == timedelta(hours=2)
    assert parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_since("2024-05-01 12:00").tzinfo is UTC
    assert parse_since("2024-05-01T12:00-05:00").tzinfo == timezone(timedelta(hours=-5))


@pytest.mark.parametrize("typed", ["yesterday", "1y", "-1h", "h", "2024-13-01", ""])
def test_since_nonsense_is_a_usage_error(typed: str) -> None:
    with pytest.raises(UsageError, match="invalid since"):
        parse_since(typed, now=NOW)
