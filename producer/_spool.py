"""The crash spool: every event is on disk before librdkafka sees it.

Layout: ``<spool_dir>/<producer id hex>/`` per live recorder, holding

- ``lock``: held with ``flock`` for the recorder's life. A lock that can be taken
  means its process is gone (the kernel drops flock locks with the process,
  kill -9 included), so whoever takes it adopts the directory.
- ``meta.json``: the topic the events belong to, the pid, when it was made.
- ``NNNNNNNNNN.seg``: segments, written in order. A segment is the 16-byte header
  ``FFSPOOL1`` + 8 zero bytes, then records
  ``[u32 length][u32 crc32(key + value)][16-byte key][value]`` (little-endian),
  then zeros up to the preallocated size. A zero length or a bad crc ends the
  segment: that is where a killed writer stopped (a torn tail).

Why memory-mapped segments and not ``os.write``: a store into a shared file
mapping costs ~0.3 us against ~1.2 us for a write syscall, and it is just as
safe against a crash of the process: the bytes are in the kernel's page cache
the moment the store completes, and the kernel writes them back even after
kill -9. Neither survives a power loss or a kernel crash (no fsync per event:
it would cost milliseconds); the spool guards against the pipeline dying, not
the machine. Segments are preallocated with ``posix_fallocate`` so that a full
disk shows up as an error when a segment is made, never as a SIGBUS on a store.

A directory is created as ``.tmp-<id>``, locked, then renamed into place, so an
adopter never sees a directory whose lock is not yet held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from ._open import remove_tables

MAGIC: Final = b"FFSPOOL1"
HEADER_SIZE: Final = 16
RECORD = struct.Struct("<II16s")
RECORD_HEADER: Final = RECORD.size  # 24
KEY_SIZE: Final = 16
READ_CHUNK: Final = 1 << 20
_SUFFIX: Final = ".seg"
_TMP_PREFIX: Final = ".tmp-"

DeliveryCallback = Callable[[Any, Any], None]
# Called with an adopted directory (its lock held) and its meta.json before its
# segments are listed: crash closing adds its segment there (see _closing).
AdoptHook = Callable[[Path, dict[str, Any]], None]


def record_bytes(key: bytes, value: bytes) -> bytes:
    """One record as it is stored (for tests and tools; the writer packs in place)."""
    return RECORD.pack(len(value), zlib.crc32(value, zlib.crc32(key)), key) + value


def parse_records(
    buf: bytes, base: int, limit: int
) -> tuple[list[tuple[bytes, bytes, int]], int, bool]:
    """The whole records in ``buf`` (read from file offset ``base``; the file's
    data ends at ``limit``): a list of (key, value, offset after the record), the
    offset where parsing stopped, and whether that is the end of the data (a zero
    length, a bad crc, or a record cut short by the end of the file)."""
    out: list[tuple[bytes, bytes, int]] = []
    pos = 0
    size = len(buf)
    while pos + RECORD_HEADER <= size:
        length, crc, key = RECORD.unpack_from(buf, pos)
        if length == 0:
            return out, base + pos, True
        end = pos + RECORD_HEADER + length
        if base + end > limit:
            return out, base + pos, True
        if end > size:
            return out, base + pos, False  # the caller reads further
        value = buf[pos + RECORD_HEADER : end]
        if zlib.crc32(value, zlib.crc32(key)) != crc:
            return out, base + pos, True
        out.append((key, value, base + end))
        pos = end
    # A few bytes at the very end of the file that cannot hold a record header.
    return out, base + pos, base + size >= limit and pos < size


def read_chunk(
    fd: int, offset: int, limit: int, chunk: int = READ_CHUNK
) -> tuple[list[tuple[bytes, bytes, int]], int, bool]:
    """Records of the file ``fd`` from ``offset`` (its data ends at ``limit``),
    reading about ``chunk`` bytes, more when one record is bigger. See
    ``parse_records``; reaching ``limit`` itself is not reported as the end."""
    want = min(chunk, limit - offset)
    while want > 0:
        buf = os.pread(fd, want, offset)
        short = len(buf) < want  # the file ends before ``limit``: a torn tail
        records, stop, at_end = parse_records(buf, offset, offset + len(buf) if short else limit)
        if records or at_end:
            return records, stop, at_end
        if short:
            return [], offset, True
        # Not one whole record in the buffer: the first is bigger than the chunk.
        want = RECORD_HEADER + RECORD.unpack_from(buf, 0)[0]
    return [], offset, False


def iter_segment(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a segment file, up to its torn tail if it has one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        limit = os.fstat(fd).st_size
        if os.pread(fd, len(MAGIC), 0) != MAGIC:
            return
        offset = HEADER_SIZE
        while offset < limit:
            records, offset, at_end = read_chunk(fd, offset, limit)
            for key, value, _ in records:
                yield key, value
            if at_end or not records:
                return
    finally:
        os.close(fd)


class Segment:
    """One segment file and its delivery accounting.

    ``written`` counts records handed out for delivery (appended, for our own
    segments; read and produced, for an adopted one), ``acked`` those the broker
    acknowledged, ``released`` those that failed for good. A sealed (or, when
    adopted, completely read) segment with ``acked + released == written`` is
    deleted. ``generation`` changes when delivery restarts from the spool (a new
    producer after a fatal error): acknowledgements of the old one no longer count.
    """

    __slots__ = (
        "acked",
        "capacity",
        "complete",
        "end",
        "fd",
        "generation",
        "index",
        "mm",
        "on_delivery",
        "path",
        "released",
        "sealed",
        "written",
    )

    def __init__(self, path: Path, index: int, fd: int, capacity: int, end: int) -> None:
        self.path = path
        self.index = index
        self.fd = fd
        self.capacity = capacity
        self.end = end
        self.mm: mmap.mmap | None = None
        self.written = 0
        self.acked = 0
        self.released = 0
        self.sealed = False
        self.complete = False
        self.generation = 0
        self.on_delivery: DeliveryCallback | None = None

    @property
    def settled(self) -> bool:
        return self.acked + self.released >= self.written

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def delete(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _segment_name(index: int) -> str:
    return f"{index:010d}{_SUFFIX}"


def _lock(path: Path, create: bool) -> int | None:
    """An fd holding the exclusive flock of ``path``, or None if someone holds it."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Spool:
    """The spool directory of this recorder. Not thread-safe: the recorder calls
    ``append`` under its lock and the pump thread does the housekeeping under it."""

    def __init__(
        self, root: Path, producer_id: bytes, topic: str, *, segment_bytes: int, max_bytes: int
    ) -> None:
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.segments: list[Segment] = []  # live, oldest first; the last may be active
        self.active: Segment | None = None
        self.spare: Segment | None = None
        self.retired: list[Segment] = []  # sealed, mapping still to be closed
        self.reserved = 0  # bytes of live segments and the spare, for max_bytes
        self.last = 0  # offset of the record the last append wrote
        self._next_index = 1
        self._retry_at = 0.0
        self.failure: str | None = None
        root.mkdir(parents=True, exist_ok=True)
        name = producer_id.hex()
        tmp = root / f"{_TMP_PREFIX}{name}"
        tmp.mkdir()
        lock_fd = _lock(tmp / "lock", create=True)
        if lock_fd is None:  # cannot happen for a fresh random name
            raise OSError(f"cannot lock {tmp / 'lock'}")
        self.lock_fd = lock_fd
        meta = {
            "version": 1,
            "topic": topic,
            "producer_id": name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "created_at": time.time(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        self.dir = root / name
        os.rename(tmp, self.dir)
        first = self.new_segment()
        if first is not None:
            self.active = first
            self.segments.append(first)

    # ------------------------------------------------------------ hot path

    def append(self, key: bytes, value: bytes) -> Segment | None:
        """Write one record; its segment, or None when the spool is full or failing."""
        seg = self.active
        need = RECORD_HEADER + len(value)
        if seg is None or seg.end + need > seg.capacity:
            seg = self._rotate(need)
            if seg is None:
                return None
        off = seg.end
        mm = seg.mm
        RECORD.pack_into(mm, off, len(value), zlib.crc32(value, zlib.crc32(key)), key)  # type: ignore[arg-type]
        mm[off + RECORD_HEADER : off + need] = value  # type: ignore[index]
        seg.end = off + need
        seg.written += 1
        self.last = off
        return seg

    def _rotate(self, need: int) -> Segment | None:
        old = self.active
        if old is not None:
            old.sealed = True
            self.retired.append(old)
            self.active = None
        if need + HEADER_SIZE > self.segment_bytes:
            return None
        seg = self.spare
        self.spare = None
        if seg is None:
            if time.monotonic() < self._retry_at:
                return None
            seg = self.new_segment()
            if seg is None:
                self._retry_at = time.monotonic() + 1.0
                return None
        self.active = seg
        self.segments.append(seg)
        return seg

    # ---------------------------------------------------------- segments

    def reserve(self) -> int | None:
        """Claim room and an index for a new segment (under the recorder's lock)."""
        if self.reserved + self.segment_bytes > self.max_bytes:
            self.failure = "full"
            return None
        self.reserved += self.segment_bytes
        index = self._next_index
        self._next_index += 1
        return index

    def unreserve(self) -> None:
        self.reserved -= self.segment_bytes

    def create(self, index: int) -> Segment | None:
        """Make a preallocated, mapped segment file (no lock needed: a new file)."""
        path = self.dir / _segment_name(index)
        fd = -1
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.posix_fallocate(fd, 0, self.segment_bytes)
            os.pwrite(fd, MAGIC + bytes(HEADER_SIZE - len(MAGIC)), 0)
            seg = Segment(path, index, fd, self.segment_bytes, HEADER_SIZE)
            seg.mm = mmap.mmap(fd, self.segment_bytes)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self.failure = f"cannot create a spool segment in {self.dir}: {e}"
            return None
        self.failure = None
        return seg

    def new_segment(self) -> Segment | None:
        index = self.reserve()
        if index is None:
            return None
        seg = self.create(index)
        if seg is None:
            self.unreserve()
        return seg

    def take_retired(self) -> list[Segment]:
        """Sealed segments whose mapping is still to be closed (see ``unmap``)."""
        retired, self.retired = self.retired, []
        return retired

    def delete_settled(self, keep: Segment | None) -> list[Segment]:
        """Forget sealed segments whose records are all settled (except ``keep``);
        the caller deletes their files (outside the lock)."""
        done = [
            s for s in self.segments if s.sealed and s.mm is None and s.settled and s is not keep
        ]
        for seg in done:
            self.segments.remove(seg)
            self.reserved -= seg.capacity
        return done

    def next_after(self, seg: Segment) -> Segment | None:
        try:
            i = self.segments.index(seg)
        except ValueError:
            return self.segments[0] if self.segments else None
        return self.segments[i + 1] if i + 1 < len(self.segments) else None

    def all_settled(self) -> bool:
        return all(s.settled for s in self.segments)

    def close(self, *, delivered: bool) -> None:
        """Release the directory; remove it if everything in it was delivered."""
        if self.active is not None:
            self.active.sealed = True
            self.retired.append(self.active)
            self.active = None
        unmap(self.take_retired())
        if self.spare is not None:
            self.spare.delete()
            self.spare = None
        for seg in self.segments:
            if delivered or (seg.written and seg.settled):
                seg.delete()
            else:
                seg.close()
                if seg.written == 0:
                    with contextlib.suppress(OSError):
                        os.unlink(seg.path)
        self.segments.clear()
        if delivered:
            remove_dir(self.dir)
        os.close(self.lock_fd)  # releases the flock: the leftovers are now adoptable

    def forget(self) -> None:
        """Close this process's copies of the spool's descriptors and mappings,
        writing, truncating and deleting nothing: in a forked child, whose
        spool this is not (the parent's, still in use by it).

        The flock stays with the parent: a lock taken with flock is released
        only when every descriptor of its open file is closed, and until the
        child's copy is, the directory could not be adopted after the parent died.
        """
        live = {id(s): s for s in (*self.segments, *self.retired, self.active, self.spare) if s}
        for seg in live.values():
            with contextlib.suppress(OSError, BufferError):
                seg.close()
        self.segments, self.retired, self.active, self.spare = [], [], None, None
        if self.lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = -1


def unmap(segments: list[Segment], *, sync: bool = False) -> None:
    """Unmap sealed segments and give back their unused preallocated tail
    (syncing them to disk first if ``sync``)."""
    for seg in segments:
        if seg.mm is not None:
            if sync:
                with contextlib.suppress(OSError, ValueError):
                    seg.mm.flush()
            seg.mm.close()
            seg.mm = None
        if seg.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(seg.fd, seg.end)
                if sync:
                    os.fsync(seg.fd)


def sync_active(seg: Segment | None) -> None:
    """Write the active segment's dirty pages to disk (msync), and its
    directory entry (a new file's name is only durable once its directory is)."""
    if seg is None or seg.mm is None:
        return
    with contextlib.suppress(OSError, ValueError):
        seg.mm.flush()
        dir_fd = os.open(seg.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_dir(path: Path) -> None:
    """Remove a spool directory that holds no records any more."""
    remove_tables(path)
    for name in ("meta.json", "lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / name)
    with contextlib.suppress(OSError):
        os.rmdir(path)


class Orphan:
    """The spool directory of a recorder that is gone, adopted for re-sending."""

    def __init__(self, path: Path, lock_fd: int, topic: str, segments: list[Segment]) -> None:
        self.path = path
        self.lock_fd = lock_fd
        self.topic = topic
        self.segments = segments
        self.current = 0  # index into segments of the one being read
        self.offset = HEADER_SIZE

    @property
    def fully_read(self) -> bool:
        return self.current >= len(self.segments)

    def release(self) -> None:
        for seg in self.segments:
            seg.close()
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)
        self.lock_fd = -1


def find_orphans(
    root: Path, own: Path | None, topic: str | None, on_adopt: AdoptHook | None = None
) -> tuple[list[Orphan], list[str]]:
    """Adopt every spool directory under ``root`` whose owner is gone (and whose
    topic is ``topic``, unless None). Returns them and warnings about the rest."""
    orphans: list[Orphan] = []
    warnings: list[str] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return orphans, warnings
    for entry in entries:
        path = Path(entry.path)
        if not entry.is_dir(follow_symlinks=False) or path == own:
            continue
        if entry.name.startswith(_TMP_PREFIX):
            # Died between mkdir and rename: it never held a record.
            fd = _lock(path / "lock", create=False)
            if fd is not None:
                remove_dir(path)
                os.close(fd)
            continue
        orphan, warning = adopt(path, topic, on_adopt)
        if orphan is not None:
            orphans.append(orphan)
        if warning:
            warnings.append(warning)
    return orphans, warnings


def adopt(
    path: Path, topic: str | None, on_adopt: AdoptHook | None = None
) -> tuple[Orphan | None, str | None]:
    """Take over the spool directory ``path`` if its owner is gone."""
    lock_path = path / "lock"
    fd = _lock(lock_path, create=False)
    if fd is None:
        return None, None
    try:
        # The previous adopter may have removed the directory between our open()
        # and our flock(): then our lock is on a deleted file and means nothing.
        if os.fstat(fd).st_ino != os.stat(lock_path).st_ino:
            os.close(fd)
            return None, None
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise TypeError("meta.json is not an object")
        owner_topic = str(meta["topic"])
    except FileNotFoundError:
        os.close(fd)
        return None, None
    except (OSError, ValueError, KeyError, TypeError) as e:
        os.close(fd)
        return None, f"spool directory {path} has no readable meta.json ({e}); left alone"
    if topic is not None and owner_topic != topic:
        os.close(fd)
        return None, None
    warning = None
    if on_adopt is not None:
        try:
            on_adopt(path, meta)
        except Exception as e:  # its events are re-sent all the same
            warning = f"spool directory {path}: {e!r}"
    segments: list[Segment] = []
    for name in sorted(os.listdir(path)):
        if not name.endswith(_SUFFIX):
            continue
        seg_path = path / name
        seg_fd = os.open(seg_path, os.O_RDONLY)
        size = os.fstat(seg_fd).st_size
        magic = os.pread(seg_fd, len(MAGIC), 0)
        if magic == bytes(len(MAGIC)) and not any(os.pread(seg_fd, HEADER_SIZE, 0)):
            # Made (allocated) by a process killed before it wrote the header:
            # it never held a record, and would keep the directory for ever.
            os.close(seg_fd)
            with contextlib.suppress(OSError):
                os.unlink(seg_path)
            continue
        if size >= len(MAGIC) and magic != MAGIC:
            os.close(seg_fd)
            warning = f"{seg_path} is not a spool segment; left alone"
            continue
        seg = Segment(seg_path, 0, seg_fd, size, size)
        seg.sealed = True
        segments.append(seg)
    return Orphan(path, fd, owner_topic, segments), warning
