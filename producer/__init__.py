"""The lineage recorder adapters call: fire-and-forget, crash-safe, microseconds per event.

::

    from factflow_lineage.producer import LineageRecorder

    recorder = LineageRecorder.from_env()
    with recorder.execution(pipeline="orders") as run:
        with recorder.invocation(run, "parse", "csv_reader", input=raw) as inv:
            for row in rows:
                ref = inv.output(row)            # LineageRef: pass it on as parent=
                send(row, headers={"lineage": ref.to_header()})

Two promises rule it: a lineage problem never fails the pipeline (nothing raises
into the caller, nothing blocks), and a pipeline crash still records lineage up
to the crash (every event is on disk, in a per-process spool, before its call
returns). See ``LineageRecorder``.
"""

from ._config import RecorderConfig, default_spool_dir
from ._context import Batch, Execution, Invocation
from ._hashing import content_hash
from ._recorder import LineageRecorder, RecorderStats
from ._ref import LineageRef

__all__ = [
    "Batch",
    "Execution",
    "Invocation",
    "LineageRecorder",
    "LineageRef",
    "RecorderConfig",
    "RecorderStats",
    "content_hash",
    "default_spool_dir",
]
