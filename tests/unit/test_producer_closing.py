"""Crash closing, on files only: the open table and the events made from it."""

from __future__ import annotations

import errno
import os
import threading
import uuid
from pathlib import Path

import pytest

from factflow_lineage.producer._closing import (
    ERROR_CLASS,
    SEGMENT_NAME,
    abandon_events,
    close_dead_spool,
    to_close,
)
from factflow_lineage.producer._open import (
    ENDING,
    EXECUTION,
    INVOCATION,
    OPEN,
    SLOTS_PER_FILE,
    STARTING,
    OpenTable,
    Slot,
    read_open,
    table_files,
)
from factflow_lineage.producer._spool import HEADER_SIZE, MAGIC, iter_segment, record_bytes
from factflow_lineage.schemas import decode, encode

EXEC = uuid.UUID(int=0xE).bytes
META = {"producer_id": "ab" * 16, "pid": 4242, "host": "worker-7", "created_at": 1.5e9}


def ident(n: int) -> bytes:
    return uuid.UUID(int=n).bytes


def started(n: int, table: OpenTable) -> Slot | None:
    slot = table.begin(INVOCATION, ident(n), ident(1000 + n), EXEC)
    table.opened(slot)
    return slot


def test_the_table_holds_what_started_and_has_not_ended(tmp_path: Path) -> None:
    table = OpenTable(tmp_path)
    slots = {n: started(n, table) for n in range(1, 6)}
    table.ending(slots[2], ident(2))
    table.end(slots[2], ident(2))
    run = table.begin(EXECUTION, EXEC, EXEC, EXEC)
    table.opened(run)
    state = read_open(tmp_path)
    assert state is not None and state.last_event_us > 0
    got = {(e.id, e.key, e.kind, e.state) for e in state.entries}
    assert got == {
        *((ident(n), ident(1000 + n), INVOCATION, OPEN) for n in (1, 3, 4, 5)),
        (EXEC, EXEC, EXECUTION, OPEN),
    }
    # A freed slot is taken again before the table grows.
    assert run == slots[2]


def test_a_full_table_grows_into_another_file(tmp_path: Path) -> None:
    table = OpenTable(tmp_path)
    for n in range(SLOTS_PER_FILE + 3):
        table.begin(INVOCATION, ident(n + 1), ident(n + 1), EXEC)
    assert len(table_files(tmp_path)) == 2
    state = read_open(tmp_path)
    assert state is not None and len(state.entries) == SLOTS_PER_FILE + 3
    assert {e.state for e in state.entries} == {STARTING}


def test_a_slot_torn_by_a_kill_is_never_read_as_open(tmp_path: Path) -> None:
    table = OpenTable(tmp_path)
    slot = started(1, table)
    table.close(remove=False)
    path = table_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    assert slot is not None
    off = slot[1]
    # The kill came in the middle of the next fill of a freed slot: state
    # (written last) still FREE, half of the new id written.
    data[off] = 0
    data[off + 16 : off + 24] = b"\xff" * 8
    path.write_bytes(bytes(data))
    state = read_open(tmp_path)
    assert state is not None and state.entries == ()


def test_a_clean_close_removes_the_table_and_a_closed_one_tracks_nothing(tmp_path: Path) -> None:
    table = OpenTable(tmp_path)
    slot = started(1, table)
    table.close(remove=True)
    assert table_files(tmp_path) == [] and read_open(tmp_path) is None
    assert table.begin(INVOCATION, ident(2), ident(2), EXEC) is None
    table.opened(slot)  # no-ops on a closed table, never an error
    table.ending(slot, ident(1))
    table.end(slot, ident(1))
    table.end(None, ident(1))


def test_an_inherited_table_frees_only_the_slot_that_is_still_its_own(tmp_path: Path) -> None:
    table = OpenTable(tmp_path)
    mine, reused = started(1, table), started(2, table)
    table.forget()  # as in a forked child
    assert table.begin(INVOCATION, ident(3), ident(3), EXEC) is None
    table.end(mine, ident(1))
    table.end(reused, ident(99))  # the parent has something else there now
    state = read_open(tmp_path)
    assert state is not None and [e.id for e in state.entries] == [ident(2)]


def spool_with(directory: Path, events: list[dict[str, object]]) -> None:
    body = b"".join(record_bytes(ident(1000 + 7), encode(e)) for e in events)
    (directory / "0000000001.seg").write_bytes(MAGIC + bytes(HEADER_SIZE - len(MAGIC)) + body)


def event(kind: str, lineage: int) -> dict[str, object]:
    payload: dict[str, object] = {"lineage_id": ident(lineage), "execution_id": EXEC}
    if kind == "INVOCATION_STARTED":
        payload |= {
            "root_id": ident(1007),
            "parent_id": None,
            "route_id": "r",
            "adapter_name": "a",
            "input_hash": None,
            "batch_id": None,
            "input_key": None,
            "metadata": {},
        }
    else:
        payload |= {"output_hash": None, "children": 0}
    return {
        "event_id": ident(5000 + lineage),
        "event_type": kind,
        "occurred_at": 1_700_000_000_000_000,
        "producer_id": ident(77),
        "sequence": 0,
        "payload": payload,
    }


@pytest.mark.parametrize(
    ("state", "spooled", "closed"),
    [
        (STARTING, [], False),  # killed before the start was spooled: nothing to close
        (STARTING, ["INVOCATION_STARTED"], True),  # killed after it
        (ENDING, ["INVOCATION_STARTED"], True),  # killed before the end was spooled
        (ENDING, ["INVOCATION_STARTED", "INVOCATION_COMPLETED"], False),  # it did end
        (OPEN, [], True),
    ],
)
def test_an_entry_caught_between_its_event_and_the_table_is_checked_in_the_spool(
    tmp_path: Path, state: int, spooled: list[str], closed: bool
) -> None:
    table = OpenTable(tmp_path)
    slot = table.begin(INVOCATION, ident(7), ident(1007), EXEC)
    if state == OPEN:
        table.opened(slot)
    elif state == ENDING:
        table.opened(slot)
        table.ending(slot, ident(7))
    spool_with(tmp_path, [event(kind, 7) for kind in spooled])
    entries = read_open(tmp_path)
    assert entries is not None
    assert [e.id for e in to_close(tmp_path, entries.entries)] == ([ident(7)] if closed else [])


def closing_records(directory: Path) -> list[dict[str, object]]:
    return [decode(v) for _, v in iter_segment(directory / SEGMENT_NAME)]


def test_a_dead_spool_gets_one_closing_segment_of_process_died_events(tmp_path: Path) -> None:
    table = OpenTable(tmp_path)
    for n in (1, 2, 3):
        started(n, table)
    table.opened(table.begin(EXECUTION, EXEC, EXEC, EXEC))
    assert close_dead_spool(tmp_path, META) == 4
    assert table_files(tmp_path) == []
    events = closing_records(tmp_path)
    failed = [e for e in events if e["event_type"] == "INVOCATION_FAILED"]
    finished = [e for e in events if e["event_type"] == "EXECUTION_FINISHED"]
    assert [e["payload"]["lineage_id"] for e in failed] == [ident(1), ident(2), ident(3)]  # type: ignore[index]
    assert events[-1] is finished[0]  # the execution after its rows
    for e in failed:
        payload = e["payload"]
        assert payload["error_class"] == ERROR_CLASS  # type: ignore[index]
        assert "process 4242 on host worker-7 died" in payload["error_message"]  # type: ignore[index]
        assert "last lineage event was at 20" in payload["error_message"]  # type: ignore[index]
    assert finished[0]["payload"]["status"] == "FAILED"  # type: ignore[index]
    assert len({e["event_id"] for e in events}) == 4
    # Nothing left to close: a second recoverer adds nothing.
    assert close_dead_spool(tmp_path, META) == 0


def test_closing_again_after_a_recoverer_died_gives_the_same_bytes(tmp_path: Path) -> None:
    table = OpenTable(tmp_path)
    started(1, table)
    table.ending(started(2, table), ident(2))
    table.close(remove=False)
    saved = {p: p.read_bytes() for p in table_files(tmp_path)}
    close_dead_spool(tmp_path, META)
    first = (tmp_path / SEGMENT_NAME).read_bytes()
    for path, data in saved.items():  # killed before it removed the tables
        path.write_bytes(data)
    close_dead_spool(tmp_path, META)
    assert (tmp_path / SEGMENT_NAME).read_bytes() == first
    assert len(closing_records(tmp_path)) == 2


def test_abandon_events_depend_only_on_what_they_close() -> None:
    rows = [(ident(1), ident(1)), (ident(2), ident(1))]
    one = abandon_events(EXEC, rows, execution_open=True, message="m1", occurred_at=1)
    two = abandon_events(EXEC, rows, execution_open=False, message="m2", occurred_at=2)
    ids = [decode(v)["event_id"] for _, v in one]
    assert len(one) == 3 and len(two) == 2
    assert [decode(v)["event_id"] for _, v in two] == ids[:2]
    assert [k for k, _ in one] == [ident(1), ident(1), EXEC]


def test_a_closing_segment_half_written_by_a_dead_recoverer_is_written_again(
    tmp_path: Path,
) -> None:
    table = OpenTable(tmp_path)
    started(1, table)
    table.close(remove=False)
    (tmp_path / f".{SEGMENT_NAME}.tmp").write_bytes(MAGIC + b"\x07" * 5)  # torn
    assert close_dead_spool(tmp_path, META) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [SEGMENT_NAME]
    assert len(closing_records(tmp_path)) == 1


def test_threads_that_find_the_table_full_at_once_all_get_a_slot(tmp_path: Path) -> None:
    table = OpenTable(tmp_path)
    for n in range(SLOTS_PER_FILE):
        table.begin(INVOCATION, ident(n + 1), ident(n + 1), EXEC)
    barrier = threading.Barrier(8)
    got: list[Slot | None] = []

    def take(n: int) -> None:
        barrier.wait()
        got.append(table.begin(INVOCATION, ident(100_000 + n), ident(1), EXEC))

    threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert None not in got and len({slot[1] for slot in got if slot}) == 8
    assert len(table_files(tmp_path)) == 2


def test_a_full_disk_is_an_error_when_a_table_is_made_never_a_sigbus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = OpenTable(tmp_path)
    for n in range(SLOTS_PER_FILE):
        table.begin(INVOCATION, ident(n + 1), ident(n + 1), EXEC)

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    assert table.begin(INVOCATION, ident(0), ident(0), EXEC) is None  # not tracked, no crash
    assert table.failure is not None and "No space left" in table.failure
    assert len(table_files(tmp_path)) == 1
    (tmp_path / "other").mkdir()
    with pytest.raises(OSError, match="No space left"):
        OpenTable(tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []


def test_a_table_that_is_no_regular_file_is_skipped_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "open-0000.tbl")  # reading it would block for ever
    os.symlink("/dev/zero", tmp_path / "open-0001.tbl")
    state = read_open(tmp_path)
    assert state is not None and state.entries == ()
    assert close_dead_spool(tmp_path, META) == 0
