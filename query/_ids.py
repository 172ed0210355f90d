"""What an operator types, parsed: ids and id prefixes, page cursors, ``--since``.

Pure functions, no database: the query module turns their results into SQL.
Everything malformed raises ``UsageError`` (exit 2 on the CLI, 422 on the API).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from factflow_lineage.errors import UsageError

MIN_PREFIX = 8
_HEX = re.compile(r"^[0-9a-f]+$")
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class IdPattern:
    """An id as typed: a full UUID (``exact``), or a hex prefix covering ``low..high``."""

    text: str
    exact: UUID | None
    low: UUID
    high: UUID


def parse_id(text: str, *, what: str = "id") -> IdPattern:
    """A full UUID or a prefix of at least 8 hex digits, as copied from a table.

    Dashes are allowed where the canonical form has them; case does not matter.
    A prefix stands for the range of UUIDs that start with it, so that the
    lookup is a range scan on the primary key's index.
    """
    typed = text.strip().lower()
    if typed.startswith("urn:uuid:"):
        typed = typed[len("urn:uuid:") :]
    digits = typed.replace("-", "")
    if not digits or not _HEX.match(digits) or len(digits) > 32:
        raise UsageError(f"malformed {what} {text!r}: expected a UUID or a hex prefix of it")
    if "-" in typed and str(UUID(digits.ljust(32, "0")))[: len(typed)] != typed:
        raise UsageError(f"malformed {what} {text!r}: dashes are not where a UUID has them")
    if len(digits) == 32:
        exact = UUID(digits)
        return IdPattern(text=text, exact=exact, low=exact, high=exact)
    if len(digits) < MIN_PREFIX:
        raise UsageError(
            f"{what} prefix {text!r} is too short: give at least {MIN_PREFIX} hex characters"
        )
    return IdPattern(
        text=text,
        exact=None,
        low=UUID(digits.ljust(32, "0")),
        high=UUID(digits.ljust(32, "f")),
    )


@dataclass(frozen=True)
class Cursor:
    """The last key of a page: the sort timestamp (None sorts last) and the row's id."""

    kind: str
    at: datetime | None
    id: UUID


def encode_cursor(cursor: Cursor) -> str:
    """An opaque, URL-safe token for ``cursor`` (base64 of a small JSON list)."""
    at = cursor.at.isoformat() if cursor.at is not None else None
    raw = json.dumps([cursor.kind, at, str(cursor.id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, *, kind: str) -> Cursor:
    """The cursor ``encode_cursor`` made; a token from another listing is a usage error."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        got_kind, at, ident = json.loads(raw)
        cursor = Cursor(
            kind=str(got_kind),
            at=None if at is None else datetime.fromisoformat(at),
            id=UUID(ident),
        )
    except (binascii.Error, ValueError, TypeError, AttributeError):
        raise UsageError(f"invalid cursor {token!r}: pass the next_cursor of a page") from None
    if cursor.kind != kind or (cursor.at is not None and cursor.at.tzinfo is None):
        raise UsageError(f"invalid cursor {token!r}: it belongs to another listing")
    return cursor


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``: an ISO-8601 date or time (UTC unless it says otherwise), or an age.

    Ages count back from now: ``45s``, ``30m``, ``1h``, ``2d``, ``1w``.
    """
    typed = text.strip()
    match = _DURATION.match(typed.lower())
    if match:
        amount = int(match.group(1))
        current = now if now is not None else datetime.now(UTC)
        return current - timedelta(**{_UNITS[match.group(2)]: amount})
    try:
        moment = datetime.fromisoformat(typed)
    except ValueError:
        raise UsageError(
            f"invalid since {text!r}: give an ISO-8601 time (2024-05-01T12:00Z) "
            "or an age such as 30m, 1h, 2d"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
