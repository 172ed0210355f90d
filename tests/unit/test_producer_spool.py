"""The crash spool's file format, torn tails, rotation and adoption."""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from pathlib import Path

import pytest

from factflow_lineage.producer._spool import (
    HEADER_SIZE,
    MAGIC,
    Spool,
    adopt,
    find_orphans,
    iter_segment,
    parse_records,
    record_bytes,
)

KEY = bytes(range(16))
SEG = 64 * 1024


def make_spool(root: Path, topic: str = "t", *, segments: int = 4) -> Spool:
    return Spool(root, os.urandom(16), topic, segment_bytes=SEG, max_bytes=segments * SEG)


def test_record_layout() -> None:
    value = b"event-bytes"
    raw = record_bytes(KEY, value)
    length, crc, key = struct.unpack_from("<II16s", raw)
    assert (length, key, raw[24:]) == (len(value), KEY, value)
    assert crc == zlib.crc32(KEY + value)


def test_parse_stops_cleanly_at_a_torn_tail() -> None:
    good = [record_bytes(KEY, b"a" * 10), record_bytes(KEY, b"b" * 20)]
    whole = b"".join(good)
    records, stop, at_end = parse_records(whole, 0, len(whole))
    assert [r[1] for r in records] == [b"a" * 10, b"b" * 20]
    assert (stop, at_end) == (len(whole), False)

    third = record_bytes(KEY, b"c" * 30)
    for cut in (1, 10, 24, 25, len(third) - 1):  # killed mid-append
        data = whole + third[:cut]
        records, stop, at_end = parse_records(data, 0, len(data))
        assert len(records) == 2 and stop == len(whole) and at_end

    corrupt = whole + third[:-1] + bytes([third[-1] ^ 0xFF])
    records, stop, at_end = parse_records(corrupt, 0, len(corrupt))
    assert len(records) == 2 and at_end

    zeros = whole + bytes(100)  # the preallocated, never written rest
    records, stop, at_end = parse_records(zeros, 0, len(zeros))
    assert len(records) == 2 and stop == len(whole) and at_end


def test_appended_records_read_back_in_order(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    values = [os.urandom(n) for n in (1, 100, 5000, 3)]
    for value in values:
        assert spool.append(KEY, value) is not None
    seg = spool.segments[0]
    assert seg.written == 4
    assert [v for _, v in iter_segment(seg.path)] == values
    assert seg.path.read_bytes()[:8] == MAGIC
    spool.close(delivered=False)


def test_segments_rotate_and_the_spool_is_bounded(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, segments=3)
    value = os.urandom(1000)
    written = 0
    while spool.append(KEY, value) is not None:
        written += 1
        assert written < 1000
    # Three segments of 64 KiB hold this many 1024-byte records, no more.
    assert written == 3 * ((SEG - HEADER_SIZE) // 1024)
    assert len(spool.segments) == 3
    assert spool.failure == "full"
    read = sum(1 for seg in spool.segments for _ in iter_segment(seg.path))
    assert read == written
    spool.close(delivered=False)


def test_close_keeps_undelivered_and_removes_delivered(tmp_path: Path) -> None:
    kept = make_spool(tmp_path)
    kept.append(KEY, b"x")
    kept.close(delivered=False)
    assert list(iter_segment(next(kept.dir.glob("*.seg")))) == [(KEY, b"x")]

    done = make_spool(tmp_path)
    done.append(KEY, b"y")
    done.close(delivered=True)
    assert not done.dir.exists()


def test_a_live_spool_is_never_adopted(tmp_path: Path) -> None:
    live = make_spool(tmp_path)
    live.append(KEY, b"x")
    orphans, warnings = find_orphans(tmp_path, None, None)
    assert orphans == [] and warnings == []
    live.close(delivered=False)  # its process "dies": the lock is free
    orphans, _ = find_orphans(tmp_path, None, None)
    assert [o.path for o in orphans] == [live.dir]
    assert orphans[0].topic == "t"
    # While adopted, nobody else can take it.
    assert adopt(live.dir, None) == (None, None)
    orphans[0].release()


def test_adoption_filters_by_topic(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, topic="orders")
    spool.close(delivered=False)
    assert find_orphans(tmp_path, None, "payments")[0] == []
    found, _ = find_orphans(tmp_path, None, "orders")
    assert len(found) == 1
    found[0].release()


def test_half_created_directories_are_cleaned_up(tmp_path: Path) -> None:
    tmp = tmp_path / ".tmp-deadbeef"
    tmp.mkdir()
    (tmp / "lock").touch()
    find_orphans(tmp_path, None, None)
    assert not tmp.exists()


def test_a_foreign_lock_holder_blocks_adoption(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    spool.close(delivered=False)
    fd = os.open(spool.dir / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert find_orphans(tmp_path, None, None)[0] == []
    finally:
        os.close(fd)


def test_unusable_spool_dir_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        make_spool(blocker)


def test_a_segment_allocated_but_never_headed_is_removed_on_adoption(tmp_path: Path) -> None:
    # Killed between posix_fallocate and writing the header: all zeros.
    dead = tmp_path / ("cd" * 16)
    dead.mkdir()
    (dead / "lock").touch()
    (dead / "meta.json").write_text('{"topic": "t"}', encoding="utf-8")
    (dead / "0000000135.seg").write_bytes(bytes(65536))
    orphan, warning = adopt(dead, "t")
    assert orphan is not None and warning is None
    assert orphan.segments == [] and not (dead / "0000000135.seg").exists()
    orphan.release()
