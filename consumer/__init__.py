"""The projector: the lineage topic, projected into PostgreSQL, exactly once in effect.

The service (``Projector``) consumes the topic in large batches and applies each
batch in one PostgreSQL transaction together with the advance of its offsets,
which are stored beside the projection (Kafka's committed offsets are advisory).
Undecodable events go to the dead-letter table. ``rebuild`` replays the topic
into a fresh schema and swaps it in atomically.
"""

from ._checksum import TableChecksum, table_checksums
from ._decoder import DeadLetter
from ._dlq import StoredDeadLetter, list_dead_letters
from ._loop import ProjectorStats
from ._offsets import load_offsets
from ._owner import ProjectionOwned
from ._planner import Plan, RejectedEvent, invalid_reason
from ._projection import ApplyStats, ParentCycleError, Projection
from ._rebuild import RebuildError, RebuildOptions, RebuildProgress, RebuildReport, rebuild
from ._runtime import RuntimeSettings
from ._service import Projector, ProjectorConfig, run_until_signalled, stop_on_signals
from ._status import PartitionLag, projector_status

__all__ = [
    "ApplyStats",
    "DeadLetter",
    "ParentCycleError",
    "PartitionLag",
    "Plan",
    "Projection",
    "ProjectionOwned",
    "Projector",
    "ProjectorConfig",
    "ProjectorStats",
    "RebuildError",
    "RebuildOptions",
    "RebuildProgress",
    "RebuildReport",
    "RejectedEvent",
    "RuntimeSettings",
    "StoredDeadLetter",
    "TableChecksum",
    "invalid_reason",
    "list_dead_letters",
    "load_offsets",
    "projector_status",
    "rebuild",
    "run_until_signalled",
    "stop_on_signals",
    "table_checksums",
]
