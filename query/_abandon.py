"""``factflow execution abandon``: crash closing for processes that never come back.

A killed pipeline's open invocations are closed when its spool is recovered
(``factflow_lineage.producer._closing``). When the spool is gone with its
machine, nobody can: the operator says so, and this records, from what the
projection shows as still open, the same events the recovery would have
(failed, ``ProcessDied``). The events go to the topic, like every fact, so a
rebuild agrees; their ids depend only on what they close, so running it again
records nothing twice.

Unless ``--force``, it refuses while the projection is behind the topic (a row
it shows pending may have completed since), and an execution that recorded
lineage within ``--idle`` minutes: one that is alive would have its running
invocations marked failed for good (failed outranks completed).
"""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from factflow_lineage.errors import NotFound, UsageError
from factflow_lineage.producer._closing import ERROR_CLASS, abandon_events, iso, send_events
from factflow_lineage.producer._config import RecorderConfig

from . import _queries as q

_PAGE = 10_000


@dataclass(frozen=True, kw_only=True)
class AbandonReport:
    """What ``execution abandon`` recorded."""

    execution_id: UUID
    invocations: int  # pending rows recorded as failed
    execution_closed: bool  # the execution was running and is recorded as failed
    error_class: str
    topic: str

    def summary(self) -> str:
        if not self.invocations and not self.execution_closed:
            return f"execution {self.execution_id}: nothing open to abandon"
        what = f"{self.invocations} pending invocation(s)"
        if self.execution_closed:
            what += " and the execution"
        return (
            f"execution {self.execution_id}: recorded {what} as failed ({self.error_class}) "
            f"on topic {self.topic}; `factflow lineage failures --execution "
            f"{self.execution_id}` lists them once the projector has them"
        )


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a container without /etc/passwd entry
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _projector_behind(conn: q.Conn) -> int:
    """Events on the topic the projection has not applied yet (failed outranks
    completed: closing a row whose completion is still on its way is for good)."""
    from factflow_lineage.config import Settings
    from factflow_lineage.consumer import load_offsets
    from factflow_lineage.pipeline._catchup import topic_end

    settings = Settings.from_env()
    end = topic_end(settings)
    stored = load_offsets(conn, settings.postgres.schema, settings.kafka.topic)
    return sum(max(0, high - stored.get(p, 0)) for p, high in end.items())


def abandon(
    conn: q.Conn, ref: str | UUID, *, force: bool, idle_s: float, timeout: float
) -> AbandonReport:
    config = RecorderConfig.from_env()
    execution = q.get_execution(conn, ref)
    ident = execution.id
    if not force:
        behind = _projector_behind(conn)
        if behind:
            raise UsageError(
                f"the projection is {behind} events behind topic {config.topic}: rows it shows "
                "pending may have ended since; run the projector to lag 0 first, or add --force"
            )
        last = q.last_activity(conn, ident)
        if last is not None:
            ago = (datetime.now(UTC) - last).total_seconds()
            if ago < idle_s:
                raise UsageError(
                    f"execution {ident} recorded lineage {max(ago, 0):.0f}s ago, within "
                    f"--idle {idle_s / 60:g} min: it may still be running; if its processes "
                    "are gone, add --force"
                )
    now_us = time.time_ns() // 1000
    message = (
        f"abandoned by an operator ({_who()}, `factflow execution abandon` at "
        f"{iso(now_us)}): the process running this is gone and its spool with it"
    )
    execution_open = execution.status == "running"
    rows: list[tuple[bytes, bytes]] = []
    after = None
    while True:
        page = q.pending_rows(conn, ident, after=after, limit=_PAGE)
        rows.extend((r[1].bytes, r[2].bytes) for r in page)
        if len(page) < _PAGE:
            break
        after = (page[-1][0], page[-1][1])
    if not rows and not execution_open:
        if not execution.known:
            raise NotFound(f"no execution {ident}")
        return AbandonReport(
            execution_id=ident,
            invocations=0,
            execution_closed=False,
            error_class=ERROR_CLASS,
            topic=config.topic,
        )
    events = abandon_events(
        ident.bytes, rows, execution_open=execution_open, message=message, occurred_at=now_us
    )
    send_events(config, events, timeout)
    return AbandonReport(
        execution_id=ident,
        invocations=len(rows),
        execution_closed=execution_open,
        error_class=ERROR_CLASS,
        topic=config.topic,
    )
