"""Versioned SQL migrations, applied in order inside one transaction.

A migration is a file ``NNNN_name.sql`` in a package's migrations folder. They
are applied into one PostgreSQL schema (``search_path`` is set to it, so the
SQL uses unqualified names): the same files build the live projection, a
rebuild's fresh schema, and every test's private schema.

Applied versions are recorded with the file's checksum in ``schema_migrations``;
a released migration whose text changed is an error, not a silent skip.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
from psycopg import sql

from .db import first_line
from .errors import MigrationError

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One SQL file of a migrations folder."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationReport:
    """What ``apply_migrations`` did: versions newly applied and versions found applied."""

    schema: str
    applied: tuple[Migration, ...]
    already: tuple[int, ...]


def load_migrations(folder: Traversable) -> tuple[Migration, ...]:
    """Read ``NNNN_name.sql`` files, in version order; other files are ignored."""
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations numbered {version:04d} in {folder}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return tuple(found[v] for v in sorted(found))


def projection_migrations() -> tuple[Migration, ...]:
    """The migrations that build the lineage projection (shipped in the consumer package)."""
    return load_migrations(resources.files("factflow_lineage.consumer") / "migrations")


def apply_migrations(
    conn: psycopg.Connection[Any], schema: str, migrations: tuple[Migration, ...]
) -> MigrationReport:
    """Bring ``schema`` up to the newest migration; all pending ones or none.

    An advisory lock keyed on the schema name serialises concurrent callers
    (two ``factflow init`` at once, or parallel test workers) so that each
    migration runs exactly once.
    """
    ident = sql.Identifier(schema)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"migrations:{schema}",))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            # The schema alone (see db.set_search_path): never public.
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            done = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
            _check_released(done, migrations)
            pending = tuple(m for m in migrations if m.version not in done)
            for migration in pending:
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
    except psycopg.Error as e:
        raise MigrationError(f"migrations into schema {schema!r} failed: {first_line(e)}") from e
    return MigrationReport(schema, pending, tuple(sorted(done)))


def _check_released(done: dict[int, str], migrations: tuple[Migration, ...]) -> None:
    known = {m.version: m for m in migrations}
    for version, checksum in sorted(done.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}, which this release does not know "
                "(a newer release applied it?)"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{migration.name} changed after it was applied; "
                "released migrations must never be edited"
            )
