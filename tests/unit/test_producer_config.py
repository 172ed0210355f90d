"""RecorderConfig: defaults, the environment, validation, librdkafka settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from factflow_lineage.errors import ConfigError
from factflow_lineage.producer import RecorderConfig, default_spool_dir
from factflow_lineage.producer._config import producer_settings
from factflow_lineage.producer._pump import KAFKA_LOGGER


def test_from_env_reads_the_shared_and_the_spool_variables(tmp_path: Path) -> None:
    config = RecorderConfig.from_env(
        {
            "FACTFLOW_KAFKA_BOOTSTRAP": "k:1",
            "FACTFLOW_TOPIC": "lineage.x",
            "FACTFLOW_SPOOL_DIR": str(tmp_path),
            "FACTFLOW_SPOOL_MAX_BYTES": str(64 * 1024 * 1024),
        }
    )
    assert (config.bootstrap, config.topic, config.spool_dir) == ("k:1", "lineage.x", tmp_path)
    assert config.spool_max_bytes == 64 * 1024 * 1024


def test_spool_defaults_to_xdg_state_and_can_be_turned_off(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    assert RecorderConfig.from_env(env).spool_dir == tmp_path / "factflow" / "spool"
    assert default_spool_dir({}) == Path.home() / ".local" / "state" / "factflow" / "spool"
    assert RecorderConfig.from_env({**env, "FACTFLOW_SPOOL": "off"}).spool_dir is None
    with pytest.raises(ConfigError, match="FACTFLOW_SPOOL"):
        RecorderConfig.from_env({"FACTFLOW_SPOOL": "maybe"})


def test_overrides_win_over_the_environment() -> None:
    config = RecorderConfig.from_env({"FACTFLOW_TOPIC": "a"}, topic="b", spool_dir=None)
    assert (config.topic, config.spool_dir) == ("b", None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bootstrap": " "},
        {"segment_bytes": 1000},
        {"spool_max_bytes": 16 * 1024 * 1024},
        {"block_timeout": -1},
        {"compression": "brotli"},
        {"traceback_max_bytes": 10},
    ],
)
def test_invalid_values_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RecorderConfig(**kwargs)  # type: ignore[arg-type]


def test_producer_settings_fit_the_job() -> None:
    config = RecorderConfig(kafka={"linger.ms": 20})
    settings = producer_settings(config, client_id="c", logger=KAFKA_LOGGER)
    assert settings["enable.idempotence"] is True
    assert settings["acks"] == "all"
    assert settings["compression.type"] == "lz4"
    assert settings["message.timeout.ms"] == 0  # never give up on a queued event
    assert settings["linger.ms"] == 20  # extra settings win
    assert settings["logger"] is KAFKA_LOGGER


def test_a_spool_dir_given_as_text_is_a_path(tmp_path: Path) -> None:
    config = RecorderConfig(spool_dir=str(tmp_path))  # type: ignore[arg-type]
    assert config.spool_dir == tmp_path and isinstance(config.spool_dir, Path)


def test_a_spool_bound_below_two_segments_names_the_variable_and_the_minimum() -> None:
    with pytest.raises(ConfigError) as raised:
        RecorderConfig.from_env({"FACTFLOW_SPOOL_MAX_BYTES": "1000000"})
    message = str(raised.value)
    assert "FACTFLOW_SPOOL_MAX_BYTES" in message
    assert "at least 33554432, not 1000000" in message
