"""The delivery engine: spool, librdkafka, and the thread that serves them.

Callers hand encoded events to ``Pump.submit``; it appends each to the spool and
produces it, under one lock, and returns. Everything slow happens on the pump's
own thread, never the caller's: serving delivery reports (``poll``), re-feeding
events from the spool, adopting the spools of dead processes, housekeeping.

Two modes. In *direct* mode each event is spooled, then produced. When
librdkafka's bounded queue is full (``BufferError``: the broker is slow or gone)
the pump switches to *backlog* mode: events are only spooled, and the pump
thread feeds them to librdkafka from a cursor (segment, offset) as the queue
drains, then switches back once it has caught up with the writer. Nothing is
dropped, nothing blocks, and memory stays bounded whatever the outage length:
what does not fit librdkafka's queue waits on disk.

Why produce() under the lock: every spooled record must be handed to librdkafka
exactly once per generation (see ``Segment``), or the per-segment counts that
decide when a segment may be deleted would be wrong. Holding the lock across
append and produce makes "spooled, produced, or left for the cursor" one step;
it is uncontended in the common case and costs ~2 us when it is not.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Producer

from factflow_lineage.errors import ConfigError

from ._closing import close_dead_spool
from ._config import RecorderConfig, producer_settings
from ._ratelog import RateLimitedLog, RateLimitFilter
from ._spool import (
    HEADER_SIZE,
    Orphan,
    Segment,
    Spool,
    find_orphans,
    read_chunk,
    remove_dir,
    sync_active,
    unmap,
)

# librdkafka's log lines repeat on every reconnect attempt: one per kind a minute.
KAFKA_LOGGER = logging.getLogger("factflow_lineage.kafka.producer")

# The broker (or librdkafka) refuses these events whatever we do: re-sending
# cannot help, so they are counted and let go of.
_PERMANENT: Final = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
    }
)
# We purged them ourselves (close, producer restart); the spool still has them.
_PURGED: Final = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
_REWIND_INTERVAL_S: Final = 5.0
_HOUSEKEEPING_S: Final = 0.1
_IDLE_POLL_S: Final = 0.05
_BLOCKED_POLL_S: Final = 0.01


class Pump:
    """Owns the producer, the spool and the background thread."""

    def __init__(
        self,
        config: RecorderConfig,
        producer_id: bytes,
        log: RateLimitedLog,
        *,
        spool: bool = True,
        adopt_topic: str | None = "",
    ) -> None:
        # adopt_topic: "" = the recorder's own topic; None = every topic (drain).
        self.config = config
        self.topic = config.topic
        self.log = log
        self.lock = threading.Lock()
        _install_log_filter(config.log_interval_s)
        self._settings = producer_settings(
            config,
            client_id=f"factflow-lineage-{producer_id.hex()[:8]}",
            logger=KAFKA_LOGGER,
        )
        self._settings["error_cb"] = self._on_error
        try:
            self.producer = Producer(self._settings)
        except (KafkaException, ValueError, TypeError) as e:
            raise ConfigError(f"invalid Kafka producer settings: {e}") from e
        self.spool: Spool | None = None
        if spool and config.spool_dir is not None:
            try:
                self.spool = Spool(
                    config.spool_dir,
                    producer_id,
                    config.topic,
                    segment_bytes=config.segment_bytes,
                    max_bytes=config.spool_max_bytes,
                )
            except OSError as e:
                log.error(
                    "spool", "lineage spool disabled, %s is unusable: %s", config.spool_dir, e
                )
        self._fsync = config.fsync_interval_s > 0
        self._adopt_root = config.spool_dir
        self._adopt_topic = config.topic if adopt_topic == "" else adopt_topic
        # Shared with callers, under the lock.
        self.closed = False
        self.backlog = False
        self.cursor: Segment | None = None
        self.cursor_off = 0
        self.backlog_count = 0
        self.emitted = 0
        self.spooled = 0
        self.unspooled = 0
        self.dropped = 0
        self.refused = 0
        # Written by the pump thread only (delivery callbacks run there).
        self.delivered = 0
        self.delivery_errors = 0
        self.recovered = 0
        self.lost = 0
        self.errors = 0
        self.orphans: list[Orphan] = []
        self.orphans_done = 0
        self.crash_closed = 0  # invocations and executions closed for dead processes
        self.last_error: str | None = None
        self.generation = 0
        self._fatal = False
        self._rewind_wanted = False
        self._last_rewind = 0.0
        # Until the first look at the spool directory: nothing adopted yet.
        self.adopt_pending = config.spool_dir is not None
        if self.spool is not None:
            for seg in self.spool.segments:
                self._arm(seg, orphan=False)
        _PUMPS.add(self)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"factflow-lineage-{producer_id.hex()[:8]}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------ hot path

    def submit(self, key: bytes, value: bytes) -> bool:
        """Spool and produce one event; False if it could go nowhere (dropped)."""
        with self.lock:
            if self.closed:
                self.dropped += 1
                return False
            self.emitted += 1
            spool = self.spool
            if spool is not None:
                seg = spool.append(key, value)
                if seg is not None:
                    self.spooled += 1
                    if seg.on_delivery is None:  # a segment made just now, not the spare
                        self._arm(seg, orphan=False)
                    if self.backlog:
                        self.backlog_count += 1
                        return True
                    try:
                        self.producer.produce(self.topic, value, key, on_delivery=seg.on_delivery)
                        return True
                    except BufferError:
                        pass
                    except KafkaException as e:
                        if self._refused_locked(e, seg):
                            return True
                    # From this record on, the pump feeds from the spool.
                    self.backlog = True
                    self.cursor = seg
                    self.cursor_off = spool.last
                    self.backlog_count += 1
                    return True
                self.unspooled += 1
            try:
                self.producer.produce(self.topic, value, key, on_delivery=self._on_unspooled)
                return True
            except BufferError:
                pass
            except KafkaException as e:
                if not self._refused_locked(e, None):  # (refused ones count themselves)
                    self.dropped += 1
                return False
        if self.config.block_timeout > 0 and self._produce_waiting(key, value):
            return True
        with self.lock:
            self.dropped += 1
            total = self.dropped
        self.log.warning(
            "full",
            "lineage event dropped: Kafka's queue is full and the spool %s; %d dropped so far",
            "is off" if self.spool is None else f"cannot take it ({self.spool.failure})",
            total,
        )
        return False

    def _produce_waiting(self, key: bytes, value: bytes) -> bool:
        """Retry produce() until block_timeout (only when the event has nowhere else to go)."""
        deadline = time.monotonic() + self.config.block_timeout
        while time.monotonic() < deadline:
            time.sleep(0.001)
            try:
                self.producer.produce(self.topic, value, key, on_delivery=self._on_unspooled)
                return True
            except BufferError:
                continue
            except KafkaException:
                return False
        return False

    def _refused_locked(self, error: KafkaException, seg: Segment | None) -> bool:
        """produce() raised: True if the event is refused for good (counted)."""
        err = error.args[0] if error.args and isinstance(error.args[0], KafkaError) else None
        if err is not None and err.fatal():
            self._fatal = True
            return False
        if err is not None and err.code() in _PERMANENT:
            self.refused += 1
            if seg is not None:
                seg.released += 1
            self.log.error("refused", "lineage event refused by Kafka, dropped: %s", error)
            return True
        return False

    # ------------------------------------------------------ delivery reports

    def _arm(self, seg: Segment, *, orphan: bool) -> None:
        """Give ``seg`` a delivery callback of the current generation."""
        generation = self.generation
        seg.generation = generation

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if seg.generation != generation:
                return  # a report for a send from before the restart
            if err is None:
                seg.acked += 1
                if orphan:
                    self.recovered += 1
                else:
                    self.delivered += 1
            elif self._delivery_failed(err):
                seg.released += 1

        seg.on_delivery = on_delivery

    def _on_unspooled(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        elif not self._delivery_failed(err):  # (a permanent failure counted itself)
            self.lost += 1  # purged at close included: no spool copy to re-send

    def _delivery_failed(self, err: KafkaError) -> bool:
        """Count and log a failed delivery; True if the event is let go of for good."""
        code = err.code()
        if code in _PURGED:
            return False
        self.delivery_errors += 1
        self.last_error = str(err)
        if err.fatal():
            self._fatal = True
            self.log.error("fatal", "Kafka producer failed (%s); restarting it", err)
            return False
        if code in _PERMANENT:
            self.lost += 1
            self.log.error("refused", "lineage event refused by Kafka, dropped: %s", err)
            return True
        if err.retriable() or code == KafkaError._MSG_TIMED_OUT:
            self._rewind_wanted = self.spool is not None
            self.log.warning(
                "retry", "lineage delivery failed (%s); re-sending from the spool", err
            )
            return False
        self.log.error("kept", "lineage delivery failed (%s); the event stays in the spool", err)
        return False

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)
        if err.fatal():
            self._fatal = True
        self.log.warning(f"kafka-{err.code()}", "Kafka: %s", err)

    # --------------------------------------------------------- the thread

    def _run(self) -> None:
        next_housekeeping = 0.0
        next_adopt = 0.0
        next_sync = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if self._fatal:
                    self._restart(new_producer=True)
                elif self._rewind_wanted and now - self._last_rewind > _REWIND_INTERVAL_S:
                    self._restart(new_producer=False)
                more = False
                blocked = False
                if self.backlog:
                    more, blocked = self._feed_backlog()
                if self.orphans and not blocked:
                    more2, blocked = self._feed_orphans()
                    more = more or more2
                self.producer.poll(
                    0 if more and not blocked else _BLOCKED_POLL_S if blocked else _IDLE_POLL_S
                )
                if now >= next_housekeeping:
                    self._housekeeping()
                    next_housekeeping = now + _HOUSEKEEPING_S
                if self._fsync and now >= next_sync:
                    self._sync()
                    next_sync = now + self.config.fsync_interval_s
                if self._adopt_root is not None and (self.adopt_pending or now >= next_adopt):
                    self.adopt()
                    self.adopt_pending = False
                    next_adopt = now + self.config.adopt_interval_s
            except Exception as e:  # the pump must outlive any bug: count, log, go on
                self.errors += 1
                self.log.error("pump", "lineage pump error: %r", e, exc_info=True)
                time.sleep(0.1)

    def _feed_backlog(self) -> tuple[bool, bool]:
        """Feed spooled events from the cursor; (more to do now, queue full)."""
        spool = self.spool
        seg = self.cursor
        if spool is None or seg is None:
            self.backlog = False
            return False, False
        off = self.cursor_off
        with self.lock:
            end = seg.end
            sealed = seg.sealed
            if off >= end:
                nxt = spool.next_after(seg)
                if nxt is None:
                    if sealed and spool.active is not None:
                        return True, False  # the writer is rotating: look again
                    self.backlog = False  # caught up with the writer
                    self.cursor = None
                    return False, False
                if not sealed:
                    return True, False
                self.cursor = nxt
                self.cursor_off = HEADER_SIZE
                return True, False
        records, stop, at_end = read_chunk(seg.fd, off, end)
        fed, blocked = self._produce_all(records, seg, self.topic)
        self.cursor_off = records[fed - 1][2] if fed else off
        if at_end and not blocked:
            self.errors += 1
            self.log.error(
                "torn", "spool segment %s is damaged at offset %d; skipped", seg.path, stop
            )
            self.cursor_off = end
        with self.lock:
            self.backlog_count -= fed
        return not blocked, blocked

    def _produce_all(
        self, records: list[tuple[bytes, bytes, int]], seg: Segment, topic: str
    ) -> tuple[int, bool]:
        """Produce records in order until the queue is full: (how many, blocked)."""
        produce = self.producer.produce
        fed = 0
        for key, value, _ in records:
            try:
                produce(topic, value, key, on_delivery=seg.on_delivery)
            except BufferError:
                return fed, True
            except KafkaException as e:
                with self.lock:
                    refused = self._refused_locked(e, seg)
                if not refused:
                    return fed, True  # not now (fatal, unknown topic): retry later
            fed += 1
        return fed, False

    def _feed_orphans(self) -> tuple[bool, bool]:
        for orphan in self.orphans:
            if orphan.fully_read:
                continue
            seg = orphan.segments[orphan.current]
            if seg.on_delivery is None or seg.generation != self.generation:
                self._arm(seg, orphan=True)
            records, _, at_end = read_chunk(seg.fd, orphan.offset, seg.end)
            fed, blocked = self._produce_all(records, seg, orphan.topic)
            seg.written += fed
            if fed:
                orphan.offset = records[fed - 1][2]
            if blocked:
                return False, True
            if at_end or orphan.offset >= seg.end or not records:
                seg.complete = True
                orphan.current += 1
                orphan.offset = HEADER_SIZE
            return True, False
        return False, False

    def _restart(self, *, new_producer: bool) -> None:
        """Re-send everything still in the spool: after a fatal producer error
        (with a new producer) or a retriable delivery failure. Duplicates are
        fine, the projector de-duplicates by event id; losses are not."""
        self._last_rewind = time.monotonic()
        self._rewind_wanted = False
        old = None
        if new_producer:
            self._fatal = False
            old = self.producer
            fresh = Producer(self._settings)
        with self.lock:
            if old is not None:
                self.producer = fresh
                if self.spool is None:
                    self.lost += len(old)
            self.generation += 1
            spool = self.spool
            if spool is not None and spool.segments:
                again = 0
                for seg in spool.segments:
                    self.delivered -= seg.acked  # they will be acknowledged again
                    seg.acked = seg.released = 0
                    self._arm(seg, orphan=False)
                    again += seg.written
                self.backlog = True
                self.cursor = spool.segments[0]
                self.cursor_off = HEADER_SIZE
                self.backlog_count = again
            if spool is not None and spool.spare is not None:
                self._arm(spool.spare, orphan=False)
        for orphan in self.orphans:
            live = [seg for seg in orphan.segments if seg.fd >= 0]  # deleted ones were delivered
            for seg in live:
                self.recovered -= seg.acked
                seg.written = seg.acked = seg.released = 0
                seg.complete = False
                seg.on_delivery = None
            orphan.segments = live
            orphan.current = 0
            orphan.offset = HEADER_SIZE
        if old is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                old.purge(in_queue=True, in_flight=True, blocking=False)
            del old
            self.log.error("restart", "Kafka producer restarted; re-sending from the spool")

    def _sync(self) -> None:
        spool = self.spool
        if spool is None:
            return
        with self.lock:
            active = spool.active
        # Outside the lock: a segment is unmapped by this thread only, so it
        # stays mapped while we sync it, even if the writer moves on.
        sync_active(active)

    def _housekeeping(self) -> None:
        self.log.flush()  # the summary of a burst of warnings that has stopped
        spool = self.spool
        if spool is not None:
            with self.lock:
                retired = spool.take_retired()
            # Slow-ish, so outside the lock: nobody writes sealed segments.
            unmap(retired, sync=self._fsync)
            with self.lock:
                keep = self.cursor if self.backlog else None
                settled = spool.delete_settled(keep)
            for seg in settled:
                seg.delete()
            with self.lock:
                index = spool.reserve() if spool.spare is None and not self.closed else None
            if index is not None:
                spare = spool.create(index)
                with self.lock:
                    if spare is None or self.closed:
                        spool.unreserve()
                        if spare is not None:
                            spare.delete()
                    else:
                        self._arm(spare, orphan=False)
                        spool.spare = spare
        for orphan in list(self.orphans):
            for seg in orphan.segments:
                if seg.complete and seg.fd >= 0 and seg.settled:
                    seg.delete()
            if orphan.fully_read and all(seg.fd < 0 for seg in orphan.segments):
                remove_dir(orphan.path)
                orphan.release()
                self.orphans.remove(orphan)
                self.orphans_done += 1

    def adopt(self) -> None:
        """Take over the spools of dead recorders (the pump thread re-sends them)."""
        if self._adopt_root is None:
            return
        own = self.spool.dir if self.spool is not None else None
        found, warnings = find_orphans(
            self._adopt_root, own, self._adopt_topic, on_adopt=self._close_dead
        )
        for warning in warnings:
            self.log.warning("adopt", "%s", warning)
        known = {o.path for o in self.orphans}
        for orphan in found:
            if orphan.path in known:
                orphan.release()
            else:
                self.orphans.append(orphan)

    def _close_dead(self, directory: Path, meta: dict[str, Any]) -> None:
        """Crash closing of an adopted spool (see ``_closing``)."""
        closed = close_dead_spool(directory, meta)
        if closed:
            self.crash_closed += closed
            self.log.warning(
                "crash-closed",
                "lineage: process %s on host %s died with %d invocations or executions "
                "open; recorded them as failed (ProcessDied)",
                meta.get("pid", "?"),
                meta.get("host", "?"),
                closed,
            )

    # ------------------------------------------------------------- control

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's spool and of the spools it
        is re-sending (their descriptors, not their files), and never use this
        pump again. No lock is taken: one held by a parent thread at the fork
        stays held here, and no other thread runs in the child yet."""
        self.closed = True
        if self.spool is not None:
            self.spool.forget()
        for orphan in self.orphans:
            orphan.release()
        self.orphans = []

    def pending(self) -> int:
        """Events not yet acknowledged: in librdkafka's queue or waiting on the spool."""
        return len(self.producer) + self.backlog_count

    def recovering(self) -> bool:
        """Whether adopted spools are still being re-sent."""
        return bool(self.orphans) or self.adopt_pending

    def wait(self, timeout: float, done: Callable[[], bool]) -> bool:
        """Sleep until ``done()`` or the timeout; the pump thread does the work."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.01)
        return True

    def close(self, timeout: float) -> int:
        """Deliver what can be within ``timeout``, stop the thread, release the
        spool. Returns the number of events left undelivered (0: none)."""
        with self.lock:
            if self.closed:
                return 0
            self.closed = True
        self.wait(timeout, lambda: self.pending() == 0)
        self._stop.set()
        self._thread.join(timeout=10)
        undelivered = self.pending()
        if len(self.producer):
            # Their delivery reports (purged) count the unspooled ones as lost;
            # spooled ones stay on disk for the next recorder.
            with contextlib.suppress(KafkaException, RuntimeError):
                self.producer.purge(in_queue=True, in_flight=True, blocking=True)
                for _ in range(100):
                    if not self.producer.poll(0):
                        break
        with self.lock:
            if self.spool is not None:
                self.spool.close(delivered=undelivered == 0 and self.spool.all_settled())
        for orphan in self.orphans:
            orphan.release()
        self.orphans.clear()
        return undelivered


_filter_installed = False


def _install_log_filter(interval: float) -> None:
    global _filter_installed
    if not _filter_installed:
        KAFKA_LOGGER.addFilter(RateLimitFilter(interval))
        _filter_installed = True


# Every pump of this process, closed ones included: a closed pump and its
# producer are garbage in a reference cycle (the producer holds callbacks
# bound to the pump) until the collector runs, and still here until then.
_PUMPS: weakref.WeakSet[Pump] = weakref.WeakSet()
# Parent objects a forked child must never destroy.
_INHERITED: list[object] = []


def _keep_forever(obj: object) -> None:
    _INHERITED.append(obj)
    # The interpreter clears module globals at exit, which would destroy it
    # there: a reference it does not know about keeps it past the end.
    try:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    except (ImportError, AttributeError, OSError):
        pass


def _after_fork() -> None:
    """In a forked child: no producer of the parent is ever destroyed here.

    A librdkafka handle's threads stayed in the parent; destroying the
    child's copy waits for them, and crashes (SIGSEGV) or hangs. That
    happens whenever the child's collector frees a pump the parent had let
    go of but not yet collected, so every pump's producer is kept, and the
    collector is off until they are (the iteration below allocates)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for pump in list(_PUMPS):
            _keep_forever(pump.producer)
    finally:
        if enabled:
            gc.enable()


os.register_at_fork(after_in_child=_after_fork)
