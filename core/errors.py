"""The one error tree of factflow-lineage.

Driver errors (psycopg, confluent-kafka) are translated into these classes at a
single boundary per driver, with ``raise ... from e``, so callers catch our
classes and the CLI can print one line instead of a traceback.
"""

from __future__ import annotations


class LineageError(Exception):
    """Root of every error factflow-lineage raises on purpose."""


class ConfigError(LineageError):
    """A setting (environment variable, option) has a value we cannot use."""


class UsageError(ConfigError):
    """A malformed argument the parser could not catch (an id, a prefix, a date)."""


class DecodeError(LineageError):
    """Bytes from the topic are not a lineage event we can read."""


class UnknownSchemaError(DecodeError):
    """A single-object-encoded event names a writer schema we do not know."""

    def __init__(self, fingerprint: bytes) -> None:
        self.fingerprint = fingerprint
        super().__init__(f"unknown writer schema fingerprint {fingerprint.hex()}")


class DatabaseUnavailable(LineageError):
    """PostgreSQL cannot be reached, or refused us."""


class MigrationError(LineageError):
    """A schema migration could not be applied (nothing of it was)."""


class BrokerUnavailable(LineageError):
    """The Kafka cluster cannot be reached, or refused an admin request."""


class NotFound(LineageError):
    """The thing asked for (a lineage row, an execution, a key) does not exist."""
