"""Crash closing: recording, on the topic, how a dead process's open work ended.

A process killed with kill -9 (or by the OOM killer) cannot record that its
running invocations and its execution ended; left alone they stay ``pending``
and ``running`` forever, indistinguishable from live ones. Whoever takes over
its spool directory (the next recorder on it, or ``factflow spool drain``)
reads its open table (``_open``) and records, for each thing open there, a
terminal event saying the process died:

- an invocation: ``INVOCATION_FAILED`` with error class ``ProcessDied`` and a
  message naming the pid, the host and the time of its last lineage event;
- an execution: ``EXECUTION_FINISHED`` with status ``FAILED`` and the same text.

The events are written as one more segment of the dead spool
(``crash-closing.seg``), so they are re-sent, acknowledged and deleted like
the rest of it, and a recoverer killed in turn leaves them for the next.
Everything about them is deterministic (event ids are UUIDv5 of what they
close; the time is the dead process's last event), so closing twice gives
the same bytes and the projector keeps one of each. For a producer that never
comes back (its machine is gone), ``factflow execution abandon`` records the
same kind of events from the projection (``abandon_events``).

Failed outranks completed in the projection, so a ``ProcessDied`` must never be
recorded for something that did end: entries caught between their event and
the table (``STARTING``, ``ENDING``) are checked against the spool itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Producer

from factflow_lineage.errors import BrokerUnavailable, ConfigError
from factflow_lineage.schemas import EventType, ExecutionStatus, decode, encode

from ._config import RecorderConfig, producer_settings
from ._open import (
    ENDING,
    EXECUTION,
    INVOCATION,
    OPEN,
    STARTING,
    OpenEntry,
    read_open,
    remove_tables,
)
from ._ratelog import LOGGER
from ._spool import HEADER_SIZE, MAGIC, iter_segment, record_bytes

ERROR_CLASS: Final = "ProcessDied"
SEGMENT_NAME: Final = "crash-closing.seg"
# Event ids of closing events: UUIDv5 in this namespace of what they close.
_NAMESPACE: Final = uuid.UUID("5f1d3c2a-8e4b-5a69-b7c0-3d2e1f0a9b8c")
_STARTED: Final = EventType.INVOCATION_STARTED.value
_TERMINAL: Final = frozenset(
    {
        EventType.INVOCATION_COMPLETED.value,
        EventType.INVOCATION_FAILED.value,
        EventType.INVOCATION_CANCELLED.value,
    }
)
_EXECUTION_STARTED: Final = EventType.EXECUTION_STARTED.value
_EXECUTION_FINISHED: Final = EventType.EXECUTION_FINISHED.value


def iso(micros: int) -> str:
    """A time as operators read it in a message: UTC, to the millisecond."""
    try:
        when = dt.datetime.fromtimestamp(micros / 1_000_000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{micros} us after the epoch"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event_id(kind: str, what: bytes, by: bytes) -> bytes:
    return uuid.uuid5(_NAMESPACE, f"{kind}:{what.hex()}:{by.hex()}").bytes


def died_message(pid: object, host: object, last_event_us: int) -> str:
    last = iso(last_event_us) if last_event_us > 0 else "an unknown time"
    return (
        f"process {pid} on host {host} died while this was running "
        f"(its last lineage event was at {last}); closed when its spool was recovered"
    )


def closing_events(
    entries: Iterable[OpenEntry],
    *,
    producer_id: bytes,
    message: str,
    occurred_at: int,
) -> list[tuple[bytes, bytes]]:
    """(key, encoded event) closing each entry as ended by the death of the
    process ``producer_id``; deterministic (see the module docstring)."""
    closer = uuid.uuid5(_NAMESPACE, f"closer:{producer_id.hex()}").bytes
    out: list[tuple[bytes, bytes]] = []
    for entry in entries:
        if entry.kind == INVOCATION:
            event_type = EventType.INVOCATION_FAILED.value
            payload: dict[str, Any] = {
                "lineage_id": entry.id,
                "execution_id": entry.execution_id,
                "error_class": ERROR_CLASS,
                "error_message": message,
                "traceback": None,
                # Outputs it announced are not known; under the settle rule
                # a failed row waits only for the children that registered.
                "children": 0,
            }
        else:
            event_type = EventType.EXECUTION_FINISHED.value
            payload = {
                "execution_id": entry.id,
                "status": ExecutionStatus.FAILED.value,
                "error": f"{ERROR_CLASS}: {message}",
            }
        event = {
            "event_id": _event_id(event_type, entry.id, producer_id),
            "event_type": event_type,
            "occurred_at": occurred_at,
            "producer_id": closer,
            "sequence": len(out),
            "payload": payload,
        }
        out.append((entry.key, encode(event)))
    return out


def _spooled(directory: Path, wanted: Mapping[bytes, OpenEntry]) -> tuple[set[bytes], set[bytes]]:
    """Of ``wanted`` (by id), those whose start and those whose end is in the
    spool segments of ``directory``. Only called for the rare entries a kill
    caught between an event and the table, so a full read is affordable."""
    keys = {e.key for e in wanted.values()}
    started: set[bytes] = set()
    ended: set[bytes] = set()
    for path in sorted(directory.glob("*.seg")):
        if path.name == SEGMENT_NAME:
            continue  # an earlier closing of ours, about to be written again
        for key, value in iter_segment(path):
            if key not in keys:
                continue
            try:
                event = decode(value)
            except Exception:  # a record we cannot read says nothing about ours
                continue
            kind = event.get("event_type")
            payload = event.get("payload") or {}
            ident = payload.get("lineage_id", payload.get("execution_id"))
            if not isinstance(ident, bytes) or ident not in wanted:
                continue
            if kind in (_STARTED, _EXECUTION_STARTED):
                started.add(ident)
            elif kind in _TERMINAL or kind == _EXECUTION_FINISHED:
                ended.add(ident)
    return started, ended


def to_close(directory: Path, entries: tuple[OpenEntry, ...]) -> list[OpenEntry]:
    """The entries that were open when the process died: ``OPEN`` ones, and
    those caught mid-event whose start is spooled and whose end is not."""
    unsure = {e.id: e for e in entries if e.state in (STARTING, ENDING)}
    started, ended = _spooled(directory, unsure) if unsure else (set(), set())
    out = []
    for entry in entries:
        if entry.state == STARTING and entry.id not in started:
            continue  # its start never reached the spool: nothing was recorded
        if entry.state == ENDING and entry.id in ended:
            continue  # it did end; the kill came before the table knew
        out.append(entry)
    # Invocations first, so an execution closed here never looks settled
    # before its rows (the projection does not depend on it, readers might).
    out.sort(key=lambda e: e.kind != INVOCATION)
    return out


def close_dead_spool(directory: Path, meta: Mapping[str, Any]) -> int:
    """Write the closing events of the dead process whose spool ``directory``
    is (its lock is held by the caller) as one more segment, then drop its
    open tables. Returns how many things it closed."""
    # What a recoverer killed while writing the closing segment left: it is
    # written again below, and a leftover would keep the directory from going.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_tmp_name(directory / SEGMENT_NAME))
    state = read_open(directory)
    if state is None:
        return 0
    entries = to_close(directory, state.entries)
    if entries:
        producer_id = bytes.fromhex(str(meta.get("producer_id") or directory.name))
        created = meta.get("created_at")
        last = state.last_event_us or (
            int(float(created) * 1_000_000) if isinstance(created, int | float) else 0
        )
        message = died_message(meta.get("pid", "?"), meta.get("host", "?"), last)
        events = closing_events(entries, producer_id=producer_id, message=message, occurred_at=last)
        _write_segment(directory / SEGMENT_NAME, events)
    # Only once the closing segment is in place: a recoverer killed before
    # this point closes the same entries again, into the same bytes.
    remove_tables(directory)
    return len(entries)


def abandon_events(
    execution: bytes,
    rows: Iterable[tuple[bytes, bytes]],
    *,
    execution_open: bool,
    message: str,
    occurred_at: int,
) -> list[tuple[bytes, bytes]]:
    """The closing events ``factflow execution abandon`` records: each (lineage
    id, root id) in ``rows`` failed, and the execution if it is still open.
    The event ids depend only on what they close, so abandoning twice records
    nothing new."""
    entries = [OpenEntry(OPEN, INVOCATION, ident, root, execution) for ident, root in rows]
    if execution_open:
        entries.append(OpenEntry(OPEN, EXECUTION, execution, execution, execution))
    marker = uuid.uuid5(_NAMESPACE, f"abandon:{execution.hex()}").bytes
    return closing_events(entries, producer_id=marker, message=message, occurred_at=occurred_at)


def send_events(config: RecorderConfig, events: list[tuple[bytes, bytes]], timeout: float) -> None:
    """Produce ``events`` to ``config.topic`` and wait until Kafka acknowledged
    every one (the operator's commands want to know, unlike a pipeline)."""
    settings = producer_settings(config, client_id="factflow-closing", logger=LOGGER)
    timeout = min(max(timeout, 0.1), 3600.0)  # inf, 1e308: librdkafka wants an int
    settings["message.timeout.ms"] = int(timeout * 1000)
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        producer = Producer(settings)
    except (KafkaException, ValueError, TypeError) as e:
        raise ConfigError(f"invalid Kafka producer settings: {e}") from e
    deadline = time.monotonic() + timeout
    for key, value in events:
        while True:
            try:
                producer.produce(config.topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                if time.monotonic() > deadline:
                    break
                producer.poll(0.1)
            except KafkaException as e:
                raise BrokerUnavailable(f"Kafka at {config.bootstrap}: {e}") from e
    left = producer.flush(max(0.0, deadline - time.monotonic()))
    if left or errors:
        why = errors[0] if errors else "no acknowledgement in time"
        raise BrokerUnavailable(
            f"{left + len(errors)} of {len(events)} events not acknowledged by Kafka at "
            f"{config.bootstrap} within {timeout:g}s ({why}); running the command again is safe"
        )


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _write_segment(path: Path, events: list[tuple[bytes, bytes]]) -> None:
    tmp = _tmp_name(path)
    data = MAGIC + bytes(HEADER_SIZE - len(MAGIC)) + b"".join(record_bytes(k, v) for k, v in events)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
