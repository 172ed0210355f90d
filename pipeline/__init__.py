"""The engine around the adapters: runs routes, stores their messages, replays executions.

- ``Pipeline`` runs a ``Route`` (ordered ``Stage``s, each a named adapter) and
  records one lineage row per message per stage with the ``LineageRecorder``.
- ``Storage`` / ``LocalStorage`` keep every stage's input message under
  ``executions/{execution_id}/{route}/{stage}/{message_id}`` (``message_key``),
  the key a lineage row names in ``metadata.input_key``.
- ``plan_replay`` / ``replay`` run a stage and everything downstream again on
  its stored inputs, as a new execution recorded with ``replay_of``.
- ``catch_up`` runs the projector in-process until the projection reached the
  end of the topic (what ``factflow demo`` and ``execution replay`` do after a run).
- ``demo_routes``: the demo pipeline (``factflow demo``) over shipped fixtures.
"""

from ._catchup import CatchUp, ProjectorBehind, catch_up
from ._demo import FixtureWeb, demo_routes, sitemap_message
from ._engine import (
    HEADER_LINEAGE,
    Adapter,
    Entry,
    Message,
    Pipeline,
    Route,
    RunResult,
    Stage,
    StageCounts,
)
from ._replay import InputsMissing, ReplayInput, ReplayPlan, needs_replay, plan_replay, replay
from ._storage import (
    InvalidKey,
    LocalStorage,
    Storage,
    StorageSettings,
    execution_prefix,
    message_key,
    stage_prefix,
    validate_key,
)

__all__ = [
    "HEADER_LINEAGE",
    "Adapter",
    "CatchUp",
    "Entry",
    "FixtureWeb",
    "InputsMissing",
    "InvalidKey",
    "LocalStorage",
    "Message",
    "Pipeline",
    "ProjectorBehind",
    "ReplayInput",
    "ReplayPlan",
    "Route",
    "RunResult",
    "Stage",
    "StageCounts",
    "Storage",
    "StorageSettings",
    "catch_up",
    "demo_routes",
    "execution_prefix",
    "message_key",
    "needs_replay",
    "plan_replay",
    "replay",
    "sitemap_message",
    "stage_prefix",
    "validate_key",
]
