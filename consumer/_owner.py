"""Who projects into a schema: one consumer group, recorded in the schema itself.

Two projectors of two consumer groups over one schema both receive every
partition. The offset fence (``_offsets``) keeps their effect exactly-once, but
they fight over every batch, and an operator who stops "the" projector leaves
the other one running unnoticed. Two schemas sharing one group is the opposite
accident: the group splits the partitions between them and each projection
stalls on the half it never receives. Hence:

- the default group is derived from topic and schema (``default_group``), so
  two projections never share one by accident;
- ``projection_owner`` (migration 0004) holds the group that owns the schema.
  ``claim`` records it at start when the schema is unowned, and refuses a
  projector of another group with one line naming the owner, unless it is told
  to take over (which records the new owner);
- every batch transaction checks the owner (``check``) right after its offset
  move: a projector whose schema was taken over stops at its next batch instead
  of committing on. It is one primary-key read per batch (tens of thousands of
  events); checking only at assignment would miss a take-over, which happens in
  another group and so revokes nothing from the old one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from factflow_lineage.errors import ConfigError, LineageError

TABLE = "projection_owner"
GROUP_PREFIX = "factflow-projector"
# Kafka accepts longer group ids, but tools (and ACL patterns) are happiest
# with what a topic name may be: at most 249 of [A-Za-z0-9._-].
_GROUP_MAX = 249
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ProjectionOwned(LineageError):
    """The projection schema is owned by another consumer group (at start, or taken over since).

    ``owner``: that group, when the schema has one (a command whose option for
    the group is not ``--group`` words its own hint from it).
    """

    def __init__(self, message: str, *, owner: Owner | None = None) -> None:
        super().__init__(message)
        self.owner = owner


@dataclass(frozen=True, slots=True)
class Owner:
    """The consumer group that projects ``topic`` into the schema, since ``claimed_at``."""

    group_id: str
    topic: str
    claimed_at: datetime


def default_group(topic: str, schema: str) -> str:
    """``factflow-projector.<topic>.<schema>.<digest>``: one group per projection.

    Topic and schema names may hold dots themselves (``t.a`` + ``b`` and ``t`` +
    ``a.b`` read alike), and characters a group id should not carry become
    ``_``: the digest of the exact topic and schema keeps every projection's
    group its own. Shortened, when need be, to 249 characters.
    """
    digest = hashlib.blake2b(f"{topic}\0{schema}".encode(), digest_size=6).hexdigest()
    readable = _UNSAFE.sub("_", f"{GROUP_PREFIX}.{topic}.{schema}")
    return f"{readable[: _GROUP_MAX - len(digest) - 1]}.{digest}"


def check_group_id(group_id: str) -> str:
    """``group_id`` if it is one Kafka accepts as given; ConfigError (exit 2) otherwise."""
    if not group_id.strip():
        raise ConfigError("the consumer group must not be empty (omit --group for the default)")
    return group_id


def load_owner(conn: psycopg.Connection[Any], schema: str) -> Owner | None:
    """The schema's owner, None if unowned."""
    row = conn.execute(
        sql.SQL("SELECT group_id, topic, claimed_at FROM {}").format(sql.Identifier(schema, TABLE))
    ).fetchone()
    return None if row is None else Owner(str(row[0]), str(row[1]), row[2])


def _describe(owner: Owner) -> str:
    return (
        f"consumer group {owner.group_id!r} (topic {owner.topic!r}, "
        f"since {owner.claimed_at.isoformat(timespec='seconds')})"
    )


def claim(
    conn: psycopg.Connection[Any], schema: str, topic: str, group_id: str, *, take_over: bool
) -> tuple[Owner, Owner | None]:
    """Make ``group_id`` on ``topic`` the owner of ``schema``; return it and the owner it replaced.

    Unowned: recorded. Owned by this group and topic: nothing changes. Owned by
    another: ``ProjectionOwned`` unless ``take_over``. Its own transaction.
    """
    table = sql.Identifier(schema, TABLE)
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (group_id, topic) VALUES (%s, %s) ON CONFLICT DO NOTHING"
                ).format(table),
                (group_id, topic),
            )
            row = conn.execute(
                sql.SQL("SELECT group_id, topic, claimed_at FROM {} FOR UPDATE").format(table)
            ).fetchone()
            assert row is not None  # inserted above, or there already
            current = Owner(str(row[0]), str(row[1]), row[2])
            if (current.group_id, current.topic) == (group_id, topic):
                return current, None
            if not take_over:
                raise ProjectionOwned(
                    f"schema {schema!r} is owned by {_describe(current)}; run this projector "
                    f"with --group {current.group_id} (and that topic), or take the schema "
                    "over deliberately with --take-over",
                    owner=current,
                )
            row = conn.execute(
                sql.SQL(
                    "UPDATE {} SET group_id = %s, topic = %s, claimed_at = now() "
                    "RETURNING group_id, topic, claimed_at"
                ).format(table),
                (group_id, topic),
            ).fetchone()
            assert row is not None
            return Owner(str(row[0]), str(row[1]), row[2]), current
    except psycopg.errors.UndefinedTable as e:
        raise ProjectionOwned(
            f"schema {schema!r} has no {TABLE} table: apply the migrations (`factflow init`)"
        ) from e


def check(conn: psycopg.Connection[Any], schema: str, topic: str, group_id: str) -> None:
    """Inside a batch transaction: go on only if ``group_id`` on ``topic`` still owns ``schema``.

    FOR SHARE: a take-over (an UPDATE of the row) waits for the batches in
    flight to commit, and every batch after it sees the new owner, so the old
    owner commits nothing once the take-over has. Several projectors of the
    owning group share the lock without waiting for each other.
    """
    row = conn.execute(
        sql.SQL("SELECT group_id, topic, claimed_at FROM {} FOR SHARE").format(
            sql.Identifier(schema, TABLE)
        )
    ).fetchone()
    if row is not None and (str(row[0]), str(row[1])) == (group_id, topic):
        return
    if row is None:
        raise ProjectionOwned(
            f"schema {schema!r} has no owner any more; this projector of group {group_id!r} stops"
        )
    owner = Owner(str(row[0]), str(row[1]), row[2])
    raise ProjectionOwned(
        f"schema {schema!r} was taken over by {_describe(owner)}"
        f"; this projector of group {group_id!r} stops",
        owner=owner,
    )


def copy_owner(conn: psycopg.Connection[Any], source: str, target: str) -> None:
    """Inside the caller's transaction: give ``target`` the owner of ``source`` (rebuild's swap).

    The source row is locked first (EXCLUSIVE: a take-over waits for the swap),
    so the schema swapped in carries exactly the owner the live one had.
    """
    conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(source, TABLE)))
    conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(target, TABLE)))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (group_id, topic, claimed_at) "
            "SELECT group_id, topic, claimed_at FROM {}"
        ).format(sql.Identifier(target, TABLE), sql.Identifier(source, TABLE))
    )
