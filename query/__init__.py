"""The read side: one query module shared by the operator CLI and the REST API.

- ``factflow lineage ...`` / ``factflow execution ...`` / ``factflow api serve``
  (Typer sub-apps in ``_cli``, mounted by the root ``factflow`` app);
- ``create_app(settings)`` in ``factflow_lineage.query._api`` (FastAPI; needs
  the ``api`` extra, so it is not imported here);
- the query functions below, each taking a connection whose search_path points
  at the projection's schema.
"""

from ._ids import IdPattern, parse_id, parse_since
from ._models import (
    BatchResult,
    ChainResult,
    ErrorInfo,
    ExecutionRow,
    LineageRow,
    Page,
    StatsResult,
    StatsRow,
    to_json,
)
from ._queries import (
    batch,
    chain,
    children,
    database_errors,
    failures,
    get_execution,
    get_lineage,
    list_executions,
    list_lineage,
    ping,
    resolve_batch_id,
    resolve_execution_id,
    resolve_lineage_id,
    stats,
)
from ._settings import ApiSettings

__all__ = [
    "ApiSettings",
    "BatchResult",
    "ChainResult",
    "ErrorInfo",
    "ExecutionRow",
    "IdPattern",
    "LineageRow",
    "Page",
    "StatsResult",
    "StatsRow",
    "batch",
    "chain",
    "children",
    "database_errors",
    "failures",
    "get_execution",
    "get_lineage",
    "list_executions",
    "list_lineage",
    "parse_id",
    "parse_since",
    "ping",
    "resolve_batch_id",
    "resolve_execution_id",
    "resolve_lineage_id",
    "stats",
    "to_json",
]
