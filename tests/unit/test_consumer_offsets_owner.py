"""The projector's consumer group: derived from topic and schema, never empty."""

from __future__ import annotations

import re

import pytest

from factflow_lineage.consumer._owner import default_group
from factflow_lineage.consumer._service import ProjectorConfig, consumer_config
from factflow_lineage.errors import ConfigError


def test_the_default_group_names_topic_and_schema() -> None:
    group = default_group("factflow.lineage", "lineage")
    assert re.fullmatch(r"factflow-projector\.factflow\.lineage\.lineage\.[0-9a-f]{12}", group)
    assert default_group("factflow.lineage", "lineage") == group  # stable
    assert ProjectorConfig().group_for("t", "s") == default_group("t", "s")
    assert ProjectorConfig(group_id="mine").group_for("t", "s") == "mine"


def test_two_projections_never_share_a_default_group() -> None:
    pairs = [
        ("t", "a"),
        ("t", "b"),
        ("u", "a"),
        ("t", "a b"),
        ("t", "a_b"),
        ("t.a", "b"),
        ("t", "a.b"),
    ]
    groups = [default_group(t, s) for t, s in pairs]
    assert len(set(groups)) == len(pairs), groups


def test_the_default_group_is_a_name_kafka_tools_accept() -> None:
    for topic, schema in [("t" * 249, "s" * 63), ("lineage", 'Projection \u00e9"x'), ("t", "s")]:
        group = default_group(topic, schema)
        assert 0 < len(group) <= 249
        assert re.fullmatch(r"[A-Za-z0-9._-]+", group), group
    assert default_group("t" * 249, "a") != default_group("t" * 249, "b")


@pytest.mark.parametrize("group", ["", " ", "\t"])
def test_an_empty_group_is_a_usage_error(group: str) -> None:
    with pytest.raises(ConfigError, match="must not be empty"):
        ProjectorConfig(group_id=group)
    with pytest.raises(ConfigError):
        consumer_config("broker:9092", ProjectorConfig(), group)


def test_the_consumer_config_carries_the_resolved_group() -> None:
    config = ProjectorConfig()
    conf = consumer_config("broker:9092", config, config.group_for("t", "s"))
    assert conf["group.id"] == default_group("t", "s")
    with pytest.raises(ConfigError):
        consumer_config("broker:9092", config)  # no group given, none configured
