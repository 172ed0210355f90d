from __future__ import annotations

import pytest

from factflow_lineage.config import Settings, env_bool
from factflow_lineage.errors import ConfigError


def test_defaults_match_the_local_stack() -> None:
    settings = Settings.from_env({})
    assert settings.kafka.bootstrap == "127.0.0.1:19092"
    assert settings.kafka.partitions == 12
    assert settings.postgres.schema == "lineage"
    assert ":15432/" in settings.postgres.dsn


def test_environment_overrides_every_field() -> None:
    settings = Settings.from_env(
        {
            "FACTFLOW_KAFKA_BOOTSTRAP": "kafka:9092",
            "FACTFLOW_TOPIC": "other.topic",
            "FACTFLOW_TOPIC_PARTITIONS": "3",
            "FACTFLOW_PG_DSN": "postgresql://w:pw@db/x",
            "FACTFLOW_PG_READ_DSN": "postgresql://r:pr@db/x",
            "FACTFLOW_PG_SCHEMA": "lineage_b",
        }
    )
    assert (settings.kafka.bootstrap, settings.kafka.topic, settings.kafka.partitions) == (
        "kafka:9092",
        "other.topic",
        3,
    )
    assert settings.postgres.dsn == "postgresql://w:pw@db/x"
    assert settings.postgres.read_dsn == "postgresql://r:pr@db/x"
    assert settings.postgres.schema == "lineage_b"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("FACTFLOW_TOPIC_PARTITIONS", "twelve", "must be an integer"),
        ("FACTFLOW_TOPIC_PARTITIONS", "0", "partitions must be"),
        ("FACTFLOW_PG_SCHEMA", "Robert'); DROP", "invalid schema name"),
        ("FACTFLOW_PG_SCHEMA", "public", "shared or system schema"),
        ("FACTFLOW_PG_SCHEMA", "information_schema", "shared or system schema"),
        ("FACTFLOW_PG_SCHEMA", "pg_catalog", "shared or system schema"),
        ("FACTFLOW_PG_SCHEMA", "pg_toast", "shared or system schema"),
        ("FACTFLOW_PG_SCHEMA", "public\n", "invalid schema name"),
        ("FACTFLOW_PG_SCHEMA", "lineage\n", "invalid schema name"),
        ("FACTFLOW_TOPIC", "bad topic", "invalid topic name"),
        ("FACTFLOW_TOPIC", "factflow.lineage\n", "invalid topic name"),
        ("FACTFLOW_KAFKA_BOOTSTRAP", " ", "is empty"),
    ],
)
def test_bad_values_are_config_errors_that_name_the_problem(
    name: str, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env({name: value})


def test_passwords_never_appear_in_repr() -> None:
    settings = Settings.from_env(
        {
            "FACTFLOW_PG_DSN": "postgresql://w:s3cret@db/x",
            "FACTFLOW_PG_READ_DSN": "host=db user=r password=t0p dbname=x",
        }
    )
    text = repr(settings)
    assert "s3cret" not in text and "t0p" not in text
    assert "postgresql://w:***@db/x" in text


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.kafka.topic = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("off", False), ("", True)])
def test_env_bool(raw: str, expected: bool) -> None:
    assert env_bool({"X": raw}, "X", True) is expected


def test_env_bool_rejects_other_words() -> None:
    with pytest.raises(ConfigError, match="X must be true or false"):
        env_bool({"X": "maybe"}, "X", True)
