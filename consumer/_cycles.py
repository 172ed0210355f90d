"""Parent cycles: the projection never holds one, whatever the order and batching.

A cycle of parent links (A names B, B names A) comes only from a corrupt or
hostile producer, but one is enough to make every walk up a chain endless and
every pending-children count unsettleable. The rule, a function of the set of
events like every other (``tests/support/reference_model.py`` implements it
too):

* the *claimed* parent of a row is the one its winning start names;
* in every cycle of claimed links, the row with the smallest
  ``(started_at, id)`` keeps no parent: it started first, so no other row of
  the cycle can have produced it, and its claim is the one that cannot be
  true. Its ``parent_id`` is stored NULL and its metadata holds
  ``factflow.parent_cycle: {"parent_id": <claimed>, "reason": ...}`` (an
  object: no producer can send one, so the note cannot be forged). Every
  other link is kept, and the rest of the row's facts too.

The same claimed links and start times give the same rows to break, so the
tables do not depend on which link arrived last. A later event can change a
cycle (an earlier start of a member, naming another parent or starting before
the broken row): the fold then finds the cycle again, from the stored note,
and breaks it where the rule now says, restoring a link it no longer needs to
break.

Where to look (the common path pays for none of this): a batch changes the
claimed link only of rows whose start wins. A cycle it closes, opens or
changes passes through such a row, and through one of two kinds at least:

* a row that was stored before (a placeholder with children, a row with an
  earlier start, or the claimed parent of a broken link): walking up its
  claimed links finds both its old cycle and its new one;
* in a cycle of rows all new in the batch, a row merged before its parent
  (merge order cannot decrease all the way around a cycle), which in
  time-ordered data almost never happens otherwise.

A row new in the batch whose parent was merged before it, or lies outside
the batch, needs no walk: a cycle through it has a member of the first or
second kind, and is found from there. The walks are bounded (``MAX_DEPTH``),
climb stored rows by one lookup per level for all walks at once, and stop at
a cycle that does not pass through their row (one written by an older
release: the read side is safe from those, see ``query/_queries.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # _fold imports this module
    from ._fold import Row, Stored

NOTE = "factflow.parent_cycle"
REASON = "parent link dropped: it closes a cycle of parent links, and this row started first in it"
# Far beyond any real chain (tens of stages deep).
MAX_DEPTH = 10_000

# id, parent_id, started_at (None without a start), the claimed parent its note names
Link = tuple[bytes, bytes | None, int | None, bytes | None]
Links = Callable[[list[bytes]], Iterable[Link]]
Fetch = Callable[[list[bytes]], Iterable["Stored"]]


@dataclass(frozen=True, slots=True)
class _Node:
    """A row as the walks see it: its claimed parent and start, and whether its link is broken."""

    parent: bytes | None
    at: int | None
    broken: bool = False


_ROOT = _Node(None, None)


class _Graph:
    """Claimed links after the batch, and before it for the rows whose start won."""

    def __init__(self, work: dict[bytes, Row], stored: dict[bytes, Stored], links: Links) -> None:
        self.work = work
        self.stored = stored
        self.links = links
        self.new: dict[bytes, _Node] = {}
        self.old: dict[bytes, _Node] = {}
        self._fetched: dict[bytes, _Node] = {}

    def node(self, lid: bytes, *, old: bool = False) -> _Node | None:
        """The row's node; None when only the database can tell (see ``load``)."""
        row = self.work.get(lid)
        if old and row is not None and row.start_won:
            found = self.old.get(lid)
            if found is None:
                found = _stored_node(row.stored)
                if found is not None:
                    self.old[lid] = found
            return found
        found = self.new.get(lid)
        if found is not None:
            return found
        if row is not None and row.start_won:
            found = _Node(row.parent_id, row.started_at)
        elif lid in self._fetched:
            found = self._fetched[lid]
        elif row is not None:
            found = _stored_node(row.stored)
        elif lid in self.stored:
            found = _stored_node(self.stored[lid])
        if found is not None:
            self.new[lid] = found
        return found

    def load(self, ids: list[bytes]) -> None:
        """Read from the database the links of rows ``node`` could not tell."""
        found = {lid: (parent, at, note) for lid, parent, at, note in self.links(ids)}
        for lid in ids:
            parent, at, note = found.get(lid, (None, None, None))
            if at is None:
                node = _ROOT
            elif parent is not None:
                node = _Node(parent, at)
            elif note is not None:
                node = _Node(note, at, broken=True)
            else:
                node = _Node(None, at)
            row = self.work.get(lid)
            if row is not None and row.start_won:
                self.old[lid] = node  # the stored state of a row whose start won
            else:
                self._fetched[lid] = node

    def walk(self, starts: list[bytes], *, old: bool = False) -> list[list[bytes]]:
        """The cycles through each of ``starts`` (each a list of its rows), all walks at once."""
        cycles: list[list[bytes]] = []
        unknown = [lid for lid in starts if self.node(lid, old=old) is None]
        if unknown:
            self.load(unknown)
        # start -> (rows passed, the same as a set, the row to look at next)
        walks: dict[bytes, tuple[list[bytes], set[bytes], bytes | None]] = {}
        for lid in starts:
            node = self.node(lid, old=old)
            if node is not None and node.parent is not None:
                walks[lid] = ([lid], {lid}, node.parent)
        while walks:
            waiting: dict[bytes, tuple[list[bytes], set[bytes], bytes | None]] = {}
            for lid, (path, passed, at) in walks.items():
                while at is not None and len(path) <= MAX_DEPTH:
                    if at == lid:
                        cycles.append(path)
                        break
                    if at in passed:
                        break  # a cycle above that does not pass through lid
                    node = self.node(at, old=old)
                    if node is None:
                        waiting[lid] = (path, passed, at)
                        break
                    path.append(at)
                    passed.add(at)
                    at = node.parent
            if waiting:
                self.load(sorted({at for _, _, at in waiting.values() if at is not None}))
            walks = waiting
        return cycles


def _stored_node(stored: Stored | None) -> _Node | None:
    if stored is None or stored[2] is None:  # no start: a placeholder, no claim
        return _ROOT
    if stored[5] is not None:  # its parent_id: kept links are the claimed ones
        return _Node(stored[5], stored[3])
    return None  # a root, or a row whose link was broken: its note tells


def resolve(
    work: dict[bytes, Row],
    stored: dict[bytes, Stored],
    suspects: list[Row],
    fetch: Fetch,
    links: Links,
    row_of: Callable[[bytes, Stored | None], Row],
) -> tuple[list[Row], dict[bytes, bytes | None]]:
    """Break the cycles through ``suspects`` by the rule.

    Returns the rows whose parent link the rule decided (``parent_id`` set to
    it; rows the batch did not touch are added to ``work``), for the caller
    to credit, and the notes to write: id -> the claimed parent of a broken
    link, or None to remove the note of a link restored.
    """
    graph = _Graph(work, stored, links)
    # Old cycles through a row whose start won: their broken rows are looked
    # at again (the cycle may be gone, or break elsewhere now).
    had_start = [r.id for r in suspects if r.stored is not None and r.stored[2] is not None]
    once_broken: set[bytes] = set()
    for cycle in graph.walk(had_start, old=True):
        for lid in cycle:
            node = graph.node(lid, old=True)
            if node is not None and node.broken:
                once_broken.add(lid)
    starts = list(dict.fromkeys([*(r.id for r in suspects), *sorted(once_broken)]))
    decided: dict[bytes, bytes | None] = {}  # row -> its parent link
    breaks: set[bytes] = set()
    for cycle in graph.walk(starts):
        if cycle[0] in decided:
            continue  # the same cycle, found from another of its rows
        first = min(cycle, key=lambda lid: (_at(graph.node(lid)), lid))
        breaks.add(first)
        for lid in cycle:
            decided[lid] = None if lid == first else _parent(graph.node(lid))
    for lid in sorted(once_broken - decided.keys()):
        decided[lid] = _parent(graph.node(lid))
    missing = [lid for lid in decided if lid not in work and lid not in stored]
    if missing:
        stored.update((r[0], r) for r in fetch(missing))
    rows: list[Row] = []
    notes: dict[bytes, bytes | None] = {}
    for lid, parent in decided.items():
        node = graph.node(lid)
        assert node is not None
        row = work.get(lid)
        if row is None:
            row = work[lid] = row_of(lid, stored.get(lid))
        if lid in breaks:
            # Noted even when it already was: a start that won brings its own metadata.
            notes[lid] = node.parent
        elif node.broken:
            notes[lid] = None
        row.parent_id = parent
        if parent is None and row.stored is None and row.staged is not None:
            # A new row, inserted from its staged start: without the link.
            s = row.staged
            row.staged = (*s[:4], None, *s[5:])
        rows.append(row)
    return rows, notes


def _parent(node: _Node | None) -> bytes | None:
    assert node is not None
    return node.parent


def _at(node: _Node | None) -> int:
    assert node is not None and node.at is not None  # a row in a cycle has a start
    return node.at
