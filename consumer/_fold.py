"""The fold: a planned batch merged with the stored rows it touches, in memory.

Pure Python, no database: the caller hands in the stored state of the batch's
rows and a ``fetch`` for the parents the propagation climbs to, and gets back
every row to write, each once, with what the batch changes in the counts.

1. **Merge.** Each staged row (one per id, see ``_planner``) meets its stored
   version; its start and terminal events win or lose by the same total
   orders as within a batch. A staged row whose events both lose (a
   duplicate) changes nothing and is left out.
2. **Propagation.** Every changed row's contribution to its parent (counted as
   a child, settled, failed below) is compared with what the parent was
   credited with (``contrib_*`` on the child); the difference goes to the
   parent, which may change its own contribution in turn, up the chain, one
   level per round. A parent nobody has stored yet becomes a placeholder.
3. **Output.** New rows to insert, stored rows to rewrite (by physical
   address), placeholders nobody names any more to delete, and the signed
   differences of the per-(execution, route, adapter) and per-execution counts
   between each row's old and new state.

Doing this in Python rather than in SQL keeps PostgreSQL to what only it can
do (find the stored rows, store the new ones): no working-set table, no
statement per propagation level, and new rows go into ``lineage`` by COPY.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from factflow_lineage.errors import LineageError

from . import _cycles

# Precedence of a row's status (a terminal event's rank; see _planner).
RANK = {"pending": 0, "completed": 1, "cancelled": 2, "failed": 3}
COUNTED = ("completed", "failed", "cancelled", "pending")

# Positions in a staged lineage row (_planner.LINEAGE_STAGE).
S_ID, S_START, S_EXECUTION, S_ROOT, S_PARENT, S_ROUTE, S_ADAPTER = range(7)
S_STARTED_AT, S_TERMINAL, S_STATUS, S_RANK, S_TERM_EXECUTION = 11, 12, 13, 14, 15
S_COMPLETED_AT, S_EXPECTED = 19, 20

# What the fold computes for every row it writes: its counters, and what it
# adds to its parent's (see ``Row.folded``).
FOLDED_COLUMNS = (
    "children_registered",
    "children_settled",
    "descendants_failed",
    "contrib_parent",
    "contrib_settled",
    "contrib_failed",
)
# A stored row as ``_sql.LOOKUP`` returns it.
STORED_COLUMNS = (
    "id",
    "tid",
    "start_event_id",
    "started_at",
    "execution_id",
    "parent_id",
    "route_id",
    "adapter_name",
    "terminal_event_id",
    "status",
    "completed_at",
    "children_expected",
    *FOLDED_COLUMNS,
)
Stored = tuple[Any, ...]
Fetch = Callable[[list[bytes]], Iterable[Stored]]


class ParentCycleError(LineageError, ValueError):
    """The batch closes a cycle of parent links, which no counter could settle.

    A ValueError too: the consumer treats it like an invalid value, narrowing
    the batch down to the event that closes the cycle and dead-lettering it.
    """


class Row:
    """A row's state while the batch is folded: the stored one, then the new one."""

    __slots__ = (  # noqa: RUF023 - in the order of a row's columns
        "id",
        "tid",
        "stored",
        "staged",
        "start_won",
        "terminal_won",
        "start_event_id",
        "started_at",
        "execution_id",
        "parent_id",
        "route_id",
        "adapter_name",
        "terminal_event_id",
        "status",
        "completed_at",
        "children_expected",
        "registered",
        "settled_children",
        "descendants_failed",
        "contrib_parent",
        "contrib_settled",
        "contrib_failed",
    )

    def __init__(self, lid: bytes, stored: Stored | None) -> None:
        self.id = lid
        self.stored = stored
        self.staged: tuple[Any, ...] | None = None
        self.start_won = False
        self.terminal_won = False
        if stored is None:
            self.tid: bytes | None = None
            self.start_event_id: bytes | None = None
            self.started_at: int | None = None
            self.execution_id: bytes | None = None
            self.parent_id: bytes | None = None
            self.route_id: str | None = None
            self.adapter_name: str | None = None
            self.terminal_event_id: bytes | None = None
            self.status = "pending"
            self.completed_at: int | None = None
            self.children_expected: int | None = None
            self.registered = 0
            self.settled_children = 0
            self.descendants_failed = 0
            self.contrib_parent: bytes | None = None
            self.contrib_settled = False
            self.contrib_failed = 0
        else:
            (
                _,
                self.tid,
                self.start_event_id,
                self.started_at,
                self.execution_id,
                self.parent_id,
                self.route_id,
                self.adapter_name,
                self.terminal_event_id,
                self.status,
                self.completed_at,
                self.children_expected,
                self.registered,
                self.settled_children,
                self.descendants_failed,
                self.contrib_parent,
                self.contrib_settled,
                self.contrib_failed,
            ) = stored

    @property
    def settled(self) -> bool:
        """Terminal, and the children it waits for settled (lineage.settled, is_settled)."""
        return is_settled(
            self.status, self.settled_children, self.children_expected, self.registered
        )

    @property
    def orphan(self) -> bool:
        """A placeholder with no event of its own and no child naming it."""
        return (
            self.start_event_id is None and self.terminal_event_id is None and not self.registered
        )

    def merge(self, s: tuple[Any, ...]) -> bool:
        """Take the staged row's events where they win; False when none does."""
        start = s[S_START]
        start_won = start is not None and (
            self.start_event_id is None
            or (s[S_STARTED_AT], start) < (self.started_at, self.start_event_id)
        )
        terminal = s[S_TERMINAL]
        terminal_won = terminal is not None and (
            self.terminal_event_id is None
            or (s[S_RANK], s[S_COMPLETED_AT], terminal)
            > (RANK[self.status], self.completed_at, self.terminal_event_id)
        )
        if not (start_won or terminal_won):
            return False
        self.staged = s
        if start_won:
            self.start_won = True
            self.start_event_id = start
            self.started_at = s[S_STARTED_AT]
            self.execution_id = s[S_EXECUTION]
            self.parent_id = s[S_PARENT]
            self.route_id = s[S_ROUTE]
            self.adapter_name = s[S_ADAPTER]
        if terminal_won:
            self.terminal_won = True
            self.terminal_event_id = terminal
            self.status = s[S_STATUS]
            self.completed_at = s[S_COMPLETED_AT]
            self.children_expected = s[S_EXPECTED]
            if self.start_event_id is None:
                # A placeholder belongs to the execution its terminal event names.
                self.execution_id = s[S_TERM_EXECUTION]
        return True

    def folded(self) -> tuple[Any, ...]:
        """The values of FOLDED_COLUMNS."""
        return (
            self.registered,
            self.settled_children,
            self.descendants_failed,
            self.contrib_parent,
            self.contrib_settled,
            self.contrib_failed,
        )

    def counted(self) -> tuple[Any, ...] | None:
        """What the counts hold of this row: None for an unknown one."""
        if self.start_event_id is None:
            return None
        return (self.execution_id, self.route_id, self.adapter_name, self.status, self.settled)


def is_settled(status: str, settled_children: int, expected: int | None, registered: int) -> bool:
    """The generated column lineage.settled, from the columns it is computed from.

    A completed row waits for every child it announced or has; a failed or
    cancelled one only for those that registered: the outputs it announced
    before it ended may never run, and waiting for them would hold the row,
    its ancestors and its execution unsettled forever.
    """
    if status == "completed":
        return settled_children >= max(expected or 0, registered)
    return status != "pending" and settled_children >= registered


def stored_counted(stored: Stored | None) -> tuple[Any, ...] | None:
    """``Row.counted`` of a row as it was stored."""
    if stored is None or stored[2] is None:
        return None
    status = stored[9]
    settled = is_settled(status, stored[13], stored[11], stored[12])
    return (stored[4], stored[6], stored[7], status, settled)


@dataclass(slots=True)
class Fold:
    """A batch folded into the stored rows: what to write, and the counts' differences."""

    inserts: list[Row] = field(default_factory=list)
    updates: list[Row] = field(default_factory=list)
    deletes: list[Row] = field(default_factory=list)
    # (execution, route, adapter) -> [count, completed, failed, cancelled, pending]
    stats: dict[tuple[bytes, str, str], list[int]] = field(default_factory=dict)
    # execution -> [total, completed, failed, cancelled, pending, unsettled]
    executions: dict[bytes, list[int]] = field(default_factory=dict)
    levels: int = 0
    # id -> the parent named in its note: a link broken to break a parent
    # cycle; None: a link restored, its note to remove (see _cycles).
    repairs: dict[bytes, bytes | None] = field(default_factory=dict)


# parent id -> [registered, settled, failed below]: what its children add since last credited
_Credits = dict[bytes, list[int]]


def _credit(row: Row, credits: _Credits) -> None:
    """Pass the change of ``row``'s contribution to its parent (old parent, new parent)."""
    # is_settled and the contribution inlined: this runs for every row the
    # batch changes, and again for every parent on the way up.
    # Only a known row (one with a start) counts as its parent's child.
    parent = row.parent_id if row.start_event_id is not None else None
    if parent is None:
        settled = False
        failed = 0
    else:
        status = row.status
        if status == "completed":
            settled = row.settled_children >= max(row.children_expected or 0, row.registered)
        else:
            settled = status != "pending" and row.settled_children >= row.registered
        failed = (status == "failed") + row.descendants_failed
    old = row.contrib_parent
    if parent == old and settled == row.contrib_settled and failed == row.contrib_failed:
        return
    if old is not None:
        c = credits.get(old)
        if c is None:
            c = credits[old] = [0, 0, 0]
        c[0] -= 1
        c[1] -= row.contrib_settled
        c[2] -= row.contrib_failed
    if parent is not None:
        c = credits.get(parent)
        if c is None:
            c = credits[parent] = [0, 0, 0]
        c[0] += 1
        c[1] += settled
        c[2] += failed
    row.contrib_parent = parent
    row.contrib_settled = settled
    row.contrib_failed = failed


def fold(
    staged: Sequence[tuple[Any, ...]],
    stored: dict[bytes, Stored],
    fetch: Fetch,
    *,
    max_levels: int,
    links: _cycles.Links,
) -> Fold:
    """Merge ``staged`` rows with their ``stored`` versions and propagate up the chains.

    ``stored``: id -> stored row of every staged id that exists. ``fetch(ids)``
    returns the stored rows among ``ids`` (parents the propagation reaches);
    ``links(ids)`` their parent links as ``_cycles`` reads them, notes included
    (only for a batch that may close or change a parent cycle).
    Raises ParentCycleError after ``max_levels`` rounds (only a cycle of parent
    links climbs that high).
    """
    work: dict[bytes, Row] = {}
    credits: _Credits = {}
    # Rows through which the batch may close or change a parent cycle (see
    # _cycles): a stored row whose start won, or a new one merged before its
    # parent. Two tests per start: the common path pays nothing more.
    suspects: list[Row] = []
    early: list[Row] = []
    for s in staged:
        lid = s[S_ID]
        row = Row(lid, stored.get(lid))
        if row.merge(s):
            work[lid] = row
            _credit(row, credits)
            if row.start_won:
                if row.stored is not None:
                    suspects.append(row)
                elif row.parent_id is not None and row.parent_id not in work:
                    early.append(row)
    for row in early:
        parent = work.get(row.parent_id or b"")
        if parent is not None and parent.start_won:
            suspects.append(row)
    repairs: dict[bytes, bytes | None] = {}
    if suspects:
        decided, repairs = _cycles.resolve(work, stored, suspects, fetch, links, Row)
        for row in decided:
            _credit(row, credits)

    levels = 0
    while credits:
        if levels >= max_levels:
            raise ParentCycleError(
                f"pending-children propagation did not finish after {max_levels} "
                "levels: the parent links of the batch's rows form a cycle"
            )
        levels += 1
        current, credits = credits, {}
        missing = [
            pid
            for pid, c in current.items()
            if pid not in work and pid not in stored and (c[0] or c[1] or c[2])
        ]
        if missing:
            stored.update((r[0], r) for r in fetch(missing))
        for pid, (registered, settled, failed) in current.items():
            if not (registered or settled or failed):
                continue
            parent = work.get(pid)
            if parent is None:
                parent = work[pid] = Row(pid, stored.get(pid))
            parent.registered += registered
            parent.settled_children += settled
            parent.descendants_failed += failed
            _credit(parent, credits)

    out = Fold(levels=levels, repairs=repairs)
    # Rows move between counted states in a few ways per batch (pending ->
    # completed in one execution, route and adapter...): counted once per way.
    moves: dict[tuple[Any, Any], int] = {}
    for row in work.values():
        if row.stored is None:
            if not row.orphan:
                out.inserts.append(row)
        elif row.orphan:
            # The only start naming it lost to an earlier one naming another
            # parent: a fresh projection of the same events never made it.
            out.deletes.append(row)
        else:
            out.updates.append(row)
        move = (stored_counted(row.stored), row.counted())
        if move[0] != move[1]:
            moves[move] = moves.get(move, 0) + 1
    for (before, after), n in moves.items():
        if before is not None:
            _count(out, before, -n)
        if after is not None:
            _count(out, after, n)
    return out


def _count(out: Fold, counted: tuple[Any, ...], sign: int) -> None:
    execution, route, adapter, status, settled = counted
    position = 1 + COUNTED.index(status)
    key = (execution, route, adapter)
    s = out.stats.get(key)
    if s is None:
        s = out.stats[key] = [0, 0, 0, 0, 0]
    s[0] += sign
    s[position] += sign
    x = out.executions.get(execution)
    if x is None:
        x = out.executions[execution] = [0, 0, 0, 0, 0, 0]
    x[0] += sign
    x[position] += sign
    if not settled:
        x[5] += sign
