"""Typed, frozen settings, parsed from the environment in exactly one place.

Every entry point (CLI, API, projector, recorder) builds a ``Settings`` once with
``Settings.from_env()`` and passes the parts down. Nothing else reads
``os.environ``.

Environment variables (defaults match scripts/stack and docker-compose.yml):

=============================  =====================================================
FACTFLOW_KAFKA_BOOTSTRAP       Kafka bootstrap servers (127.0.0.1:19092)
FACTFLOW_TOPIC                 lineage event topic (factflow.lineage)
FACTFLOW_TOPIC_PARTITIONS      partitions when ``factflow init`` creates it (12)
FACTFLOW_PG_DSN                projector's (writer) DSN
FACTFLOW_PG_READ_DSN           query side's (read-only) DSN
FACTFLOW_PG_SCHEMA             PostgreSQL schema holding the projection (lineage)
=============================  =====================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigError

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
DEFAULT_TOPIC = "factflow.lineage"
DEFAULT_PARTITIONS = 12
DEFAULT_PG_DSN = "postgresql://factflow_writer:factflow_writer@127.0.0.1:15432/factflow"
DEFAULT_PG_READ_DSN = "postgresql://factflow_reader:factflow_reader@127.0.0.1:15432/factflow"
DEFAULT_PG_SCHEMA = "lineage"

# Matched whole (fullmatch): with ``match``, ``$`` also matches before a final
# newline, and 'public\n' passed as a name of its own.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Schemas a projection must never live in: ``public`` is every role's default
# (a table there would be found by any session whose own schema lacks it), and
# ``pg_*`` and ``information_schema`` belong to the system.
_RESERVED_SCHEMAS = frozenset({"public", "information_schema"})
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _redact(dsn: str) -> str:
    """A DSN fit for logs: the password replaced, whatever the DSN's form."""
    dsn = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    """Where the lineage topic lives."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    topic: str = DEFAULT_TOPIC
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        if not self.bootstrap.strip():
            raise ConfigError("FACTFLOW_KAFKA_BOOTSTRAP is empty")
        if not _TOPIC.fullmatch(self.topic):
            raise ConfigError(f"invalid topic name {self.topic!r}")
        if not 1 <= self.partitions <= 10_000:
            raise ConfigError(f"partitions must be 1..10000, not {self.partitions}")


@dataclass(frozen=True, kw_only=True)
class PostgresSettings:
    """Where the projection lives. ``schema`` is a PostgreSQL schema name."""

    dsn: str = field(default=DEFAULT_PG_DSN, repr=False)
    read_dsn: str = field(default=DEFAULT_PG_READ_DSN, repr=False)
    schema: str = DEFAULT_PG_SCHEMA

    def __post_init__(self) -> None:
        if not _IDENTIFIER.fullmatch(self.schema):
            raise ConfigError(
                f"invalid schema name {self.schema!r}: lower-case letters, digits, underscore"
            )
        if self.schema in _RESERVED_SCHEMAS or self.schema.startswith("pg_"):
            raise ConfigError(
                f"FACTFLOW_PG_SCHEMA={self.schema!r} is a shared or system schema; "
                "the projection needs a schema of its own (e.g. lineage)"
            )

    def __repr__(self) -> str:  # secrets never printed
        return (
            f"PostgresSettings(dsn={_redact(self.dsn)!r}, "
            f"read_dsn={_redact(self.read_dsn)!r}, schema={self.schema!r})"
        )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything an entry point needs to know about its surroundings."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``FACTFLOW_*`` variables; unset means default."""
        env = os.environ if environ is None else environ
        return cls(
            kafka=KafkaSettings(
                bootstrap=env.get("FACTFLOW_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP),
                topic=env.get("FACTFLOW_TOPIC", DEFAULT_TOPIC),
                partitions=env_int(env, "FACTFLOW_TOPIC_PARTITIONS", DEFAULT_PARTITIONS),
            ),
            postgres=PostgresSettings(
                dsn=env.get("FACTFLOW_PG_DSN", DEFAULT_PG_DSN),
                read_dsn=env.get("FACTFLOW_PG_READ_DSN", DEFAULT_PG_READ_DSN),
                schema=env.get("FACTFLOW_PG_SCHEMA", DEFAULT_PG_SCHEMA),
            ),
        )


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """An integer variable, or a ConfigError that names it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    """A number variable, or a ConfigError that names it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A yes/no variable (1/0, true/false, yes/no, on/off)."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")
