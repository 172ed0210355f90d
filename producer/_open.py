"""What this process has open, on disk: the invocations and executions that
started and have not ended, for crash closing (``_closing``) to close.

A crash leaves its open invocations ``pending`` and its execution ``running``
forever unless someone records how they ended; the only one who can say which
were open is the process itself, and it is dead. So the recorder keeps a table
of them in its spool directory, in memory-mapped files, as the spool keeps its
events: a store into a shared mapping survives kill -9 (see ``_spool``), and
costs a fraction of a microsecond, where an event costs ten.

Files ``open-NNNN.tbl`` (a new one when all slots are taken): the 16-byte
header ``FFOPEN01`` + 8 zero bytes, then slots of 64 bytes::

    u8 state | u8 kind | 6 pad | i64 time | 16 id | 16 key | 16 execution id

``time`` (nanoseconds since the epoch) is when the slot last changed: at a
start and at an end, so the largest in a file, free slots included (freeing
one clears its state byte only), is the time of the process's last event.

``state`` is written last when a slot is filled and first when it is freed,
so a kill in the middle of a store leaves a free slot, never a torn one.
The states bracket the event they stand for, because the kill can also land
between the event and the table:

- ``STARTING``: the start event is being spooled; whether it was is found in
  the spool at recovery;
- ``OPEN``: started, not ended;
- ``ENDING``: the terminal event is being spooled; the same question.

Why not derive the open set from the spool: a segment is deleted once Kafka
acknowledged it, so an invocation that started an hour ago has no trace left
there. The table is per process, like the spool, so no lock is shared: slots
are taken from a free list (``list.pop`` and ``append`` are atomic under the GIL).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MAGIC: Final = b"FFOPEN01"
HEADER_SIZE: Final = 16
SLOT_SIZE: Final = 64
SLOT = struct.Struct("<BB6xq16s16s16s")
_TIME = struct.Struct("<q")
SLOTS_PER_FILE: Final = 16_384  # 1 MiB a file
_PREFIX: Final = "open-"
_SUFFIX: Final = ".tbl"

FREE: Final = 0
STARTING: Final = 1
OPEN: Final = 2
ENDING: Final = 3

INVOCATION: Final = 1
EXECUTION: Final = 2

# A slot: its file's mapping and its offset there (None: not tracked).
Slot = tuple[mmap.mmap, int]

_time_ns = time.time_ns


@dataclass(frozen=True, slots=True)
class OpenEntry:
    """One slot in use, as read back after the process died."""

    state: int
    kind: int  # INVOCATION or EXECUTION
    id: bytes  # lineage id, or execution id
    key: bytes  # the Kafka key of its events (the chain root, or the execution id)
    execution_id: bytes


@dataclass(frozen=True, slots=True)
class OpenState:
    """What a dead process had open, and when it last recorded anything."""

    entries: tuple[OpenEntry, ...]
    last_event_us: int  # 0 if unknown


def table_files(directory: Path) -> list[Path]:
    """The open tables of a spool directory, in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / n for n in sorted(names) if n.startswith(_PREFIX) and n.endswith(_SUFFIX)]


class OpenTable:
    """This process's open invocations and executions (see the module docstring).

    ``begin`` hands out a slot (None: not tracked, the table is closed or
    cannot grow) that ``opened``, ``ending`` and ``end`` take back; every
    method takes None, and a closed table, without complaint: the table must
    never be a reason an event is not recorded. A few hundred nanoseconds an
    invocation: each call is one or two stores into the mapping.
    """

    __slots__ = (
        "_dir",
        "_fds",
        "_free",
        "_grow_lock",
        "_maps",
        "closed",
        "failure",
        "inherited",
    )

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._maps: list[mmap.mmap] = []
        self._fds: list[int] = []
        self._free: list[Slot] = []
        self._grow_lock = threading.Lock()
        self.closed = False
        self.inherited = False  # a forked child's copy: the parent owns the slots
        self.failure: str | None = None
        if not self._grow():
            raise OSError(self.failure)

    # ------------------------------------------------------------ hot path

    def begin(self, kind: int, ident: bytes, key: bytes, execution: bytes) -> Slot | None:
        """Take a slot for something whose start event is about to be spooled."""
        try:
            slot = self._free.pop()
        except IndexError:
            slot = self._grown()
            if slot is None:
                return None
        mm, off = slot
        try:
            SLOT.pack_into(mm, off, FREE, kind, _time_ns(), ident, key, execution)
            mm[off] = STARTING  # last: the slot is whole before it counts
        except ValueError:  # closed under us by another thread
            return None
        return slot

    def opened(self, slot: Slot | None) -> None:
        """The start event is spooled."""
        if slot is not None:
            try:  # noqa: SIM105 (contextlib.suppress costs more than the store)
                slot[0][slot[1]] = OPEN
            except ValueError:  # closed under us by another thread
                pass

    def ending(self, slot: Slot | None, ident: bytes) -> None:
        """The terminal event is about to be spooled."""
        if slot is None:
            return
        mm, off = slot
        try:
            if self.inherited and mm[off + 16 : off + 32] != ident:
                return  # the parent reused the slot: ours was freed there
            mm[off] = ENDING
            _TIME.pack_into(mm, off + 8, _time_ns())
        except ValueError:
            return

    def end(self, slot: Slot | None, ident: bytes) -> None:
        """The terminal event is spooled: free the slot."""
        if slot is None:
            return
        mm, off = slot
        try:
            if self.inherited:
                # Ended in a forked child: the mapping is shared with the
                # parent, so freeing the slot here tells the parent's table
                # (and whoever closes it after a crash) that it ended.
                if mm[off + 16 : off + 32] == ident:
                    mm[off] = FREE
                return
            mm[off] = FREE
        except ValueError:
            return
        self._free.append(slot)

    # ------------------------------------------------------------- control

    def _grown(self) -> Slot | None:
        """A slot from a new table file, when all are taken (the slow path:
        once per 16,384 open at once). One thread grows; the others wait."""
        with self._grow_lock:
            while True:
                try:
                    return self._free.pop()
                except IndexError:
                    if self.inherited or self.closed or not self._grow():
                        return None

    def _grow(self) -> bool:
        """Add a table file; False (and ``failure``) if it cannot be made."""
        index = len(self._maps)
        path = self._dir / f"{_PREFIX}{index:04d}{_SUFFIX}"
        size = HEADER_SIZE + SLOTS_PER_FILE * SLOT_SIZE
        fd = -1
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            # Allocated now, as the spool's segments are: a store into a page of
            # a sparse file that the disk cannot back is a SIGBUS that kills
            # the pipeline; a full disk must show up here, as an error.
            os.posix_fallocate(fd, 0, size)
            os.pwrite(fd, MAGIC + bytes(HEADER_SIZE - len(MAGIC)), 0)
            mm = mmap.mmap(fd, size)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self.failure = f"cannot make an open-invocation table in {self._dir}: {e}"
            return False
        self._maps.append(mm)
        self._fds.append(fd)
        # Popped from the end: the lowest slots first, so pages fill in order.
        last = HEADER_SIZE + (SLOTS_PER_FILE - 1) * SLOT_SIZE
        self._free[:0] = [(mm, off) for off in range(last, HEADER_SIZE - 1, -SLOT_SIZE)]
        return True

    def forget(self) -> None:
        """In a forked child: keep the mappings (an invocation inherited from
        the parent and ended here frees its slot in them), take no new slot,
        and close the descriptors (the mappings do not need them)."""
        self.inherited = True
        self._free = []
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    def close(self, *, remove: bool) -> None:
        """Stop tracking; with ``remove``, delete the files (a clean close: the
        process did not die, so nothing of it is to be closed for it)."""
        if self.closed:
            return
        self.closed = True
        self._free = []
        for mm in self._maps:
            with contextlib.suppress(OSError, ValueError, BufferError):
                mm.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._maps, self._fds = [], []
        if remove and not self.inherited:
            for path in table_files(self._dir):
                with contextlib.suppress(OSError):
                    os.unlink(path)


def read_open(directory: Path) -> OpenState | None:
    """The open entries a dead process's tables hold (None: it left no table)."""
    paths = table_files(directory)
    if not paths:
        return None
    entries: list[OpenEntry] = []
    last = 0
    limit = HEADER_SIZE + SLOTS_PER_FILE * SLOT_SIZE
    for path in paths:
        try:
            # Only a regular file of a table's size: a FIFO, a device or a
            # symlink there (however it came) must not stall the recoverer.
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                data = os.pread(fd, limit, 0)
            finally:
                os.close(fd)
        except OSError:
            continue
        if data[: len(MAGIC)] != MAGIC:
            continue
        end = len(data) - SLOT_SIZE
        for off in range(HEADER_SIZE, end + 1, SLOT_SIZE):
            state, kind, when, ident, key, execution = SLOT.unpack_from(data, off)
            if when > last:
                last = when
            if state in (STARTING, OPEN, ENDING) and kind in (INVOCATION, EXECUTION):
                entries.append(OpenEntry(state, kind, ident, key, execution))
    return OpenState(tuple(entries), last // 1000)


def remove_tables(directory: Path) -> None:
    for path in table_files(directory):
        with contextlib.suppress(OSError):
            os.unlink(path)
