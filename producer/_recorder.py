"""LineageRecorder: the object adapters call."""

from __future__ import annotations

import atexit
import gc
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from factflow_lineage._repair import Notes, truncate
from factflow_lineage.schemas import encode

from ._config import RecorderConfig
from ._context import Batch, Execution, Invocation
from ._events import SHRUNK_FIELD_BYTES, fit_payload, shrink_metadata
from ._ids import new_random_id
from ._open import OpenTable, Slot
from ._pump import Pump
from ._ratelog import LOGGER, RateLimitedLog

_time_ns = time.time_ns
# Free-text fields that are cut when an event is over event_max_bytes.
_TEXT_FIELDS: Final = (
    "route_id",
    "adapter_name",
    "input_key",
    "input_hash",
    "output_hash",
    "pipeline",
    "replay_from_stage",
    "reason",
    "error",
    "error_class",
    "error_message",
)


@dataclass(frozen=True, kw_only=True)
class RecorderStats:
    """Counters of a recorder since it was made (a snapshot).

    ``emitted`` events were handed to the recorder while it was open; of those,
    ``delivered`` are acknowledged by Kafka, ``spooled`` were written to the
    spool first, ``unspooled`` went without a spool copy (spool full or off),
    ``backlog`` wait in the spool for room in librdkafka's queue and
    ``queue_depth`` sit in that queue. ``dropped`` events are lost for good
    (recorder closed, no room anywhere, unencodable, refused by the broker).
    ``delivery_errors`` counts failed deliveries (see the log).
    ``recovered`` counts events of dead processes' spools re-sent and
    acknowledged, ``recovering`` the spools being re-sent now (1 until the first
    look at the spool directory, shortly after start); ``crash_closed`` the
    invocations and executions those dead processes had open, recorded as
    failed (``ProcessDied``). ``metadata_coerced``:
    events whose metadata had to be changed to fit the contract;
    ``hash_errors``: inputs or outputs that could not be hashed;
    ``repaired``: events recorded with a value changed or left out because
    it could not be taken as given (a lone surrogate, an input that cannot be
    hashed, a garbage parent or execution id...), each noted on its row
    (``factflow.repaired``); ``errors``:
    problems caught at the recorder's boundary (see the log of
    ``factflow_lineage.producer``). ``spool_bytes``: disk the spool holds.
    """

    emitted: int
    delivered: int
    spooled: int
    unspooled: int
    dropped: int
    delivery_errors: int
    queue_depth: int
    backlog: int
    recovered: int
    recovering: int
    crash_closed: int
    metadata_coerced: int
    hash_errors: int
    repaired: int
    errors: int
    spool_bytes: int


class LineageRecorder:
    """Records lineage events to Kafka, fire-and-forget: one per process, thread-safe.

    Nothing here raises into the caller because of Kafka, the spool, the user's
    metadata or a closed recorder, and no call waits (unless
    ``RecorderConfig.block_timeout`` allows it when an event could go nowhere
    else). Problems are counted (``stats()``) and logged at most once a minute
    per kind, on the ``factflow_lineage.producer`` logger. Exceptions of the
    user's own code inside ``with recorder.invocation(...)`` propagate unchanged.

    Every event is appended to a per-process spool file before librdkafka sees
    it, so a process killed at any moment (kill -9 included) loses nothing whose
    call returned: the next recorder started on the same spool directory, or
    ``factflow spool drain``, re-sends what Kafka had not acknowledged. (A power
    loss is another matter: see ``RecorderConfig.fsync_interval_s``.)

    Use it from threads and from asyncio code alike (no call blocks). Close it
    (or use it as a context manager) to deliver what is queued; at interpreter
    exit it is closed with ``config.close_timeout``.
    """

    def __init__(self, config: RecorderConfig | None = None) -> None:
        self.config = config if config is not None else RecorderConfig()
        self._log = RateLimitedLog(LOGGER, self.config.log_interval_s)
        self._closed = False
        # Inherited through fork and not used in this process yet (see _reopen).
        self._forked = False
        self._fork_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._open()
        # An event must fit a spool segment with room to spare.
        self._event_max = min(self.config.event_max_bytes, self.config.segment_bytes // 2)
        _LIVE.add(self)

    def _open(self) -> None:
        """What is this process's own: producer id, sequence, pump (producer,
        thread, spool directory) and counters."""
        self._producer_id = new_random_id()
        self._seq = itertools.count().__next__
        self._pump = Pump(self.config, self._producer_id, self._log)
        self._table = self._open_table()
        self._pid = os.getpid()
        self._metadata_coerced = 0
        self._hash_errors = 0
        self._repaired = 0
        self._errors = 0
        self._dropped = 0

    def _open_table(self) -> OpenTable | None:
        """The table of what is open, for crash closing; beside the spool, and
        only with one (without a spool a crash loses events anyway)."""
        spool = self._pump.spool
        if spool is None:
            return None
        try:
            return OpenTable(spool.dir)
        except OSError as e:
            self._log.error(
                "open-table",
                "lineage: crash closing is off (a crash leaves its invocations pending): %s",
                e,
            )
            return None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> LineageRecorder:
        """A recorder configured by ``RecorderConfig.from_env``."""
        return cls(RecorderConfig.from_env(environ, **overrides))

    @property
    def producer_id(self) -> bytes:
        """The 16-byte id of this recorder in its events (and its spool directory's name)."""
        return self._producer_id

    # ------------------------------------------------------------ contexts

    def execution(
        self,
        pipeline: str,
        execution_id: Any = None,
        metadata: Mapping[str, Any] | None = None,
        replay_of: Any = None,
        replay_from_stage: str | None = None,
    ) -> Execution:
        """Record that a pipeline execution started; the result is a context
        manager that records how it finished (completed, or failed if the block
        raises, or cancelled on KeyboardInterrupt / asyncio cancellation).
        ``.id`` is the execution id (new unless ``execution_id`` is given)."""
        return Execution(self, pipeline, execution_id, metadata, replay_of, replay_from_stage)

    def invocation(
        self,
        execution_id: Any,
        route_id: str,
        adapter_name: str,
        *,
        input: Any = None,
        parent: Any = None,
        batch_id: Any = None,
        metadata: Mapping[str, Any] | None = None,
        input_key: str | None = None,
        input_hash: str | None = None,
    ) -> Invocation:
        """Record that an adapter started on one input message; see ``Invocation``.

        ``execution_id``: a UUID, its string, or an ``Execution``. ``input``: the
        message (bytes, str, dict or list; its content hash is recorded), or pass
        ``input_hash`` yourself. ``parent``: the ``LineageRef`` (or its header) of
        the invocation whose output this input is; without one this invocation is
        the root of a new chain. ``metadata``: scalar annotations (others are
        converted to text and counted in ``metadata_coerced``).
        """
        return Invocation(
            self,
            execution_id,
            route_id,
            adapter_name,
            input,
            parent,
            batch_id,
            metadata,
            input_key,
            input_hash,
        )

    def batch(
        self,
        execution_id: Any,
        route_id: str,
        adapter_name: str,
        *,
        inputs: Iterable[Any],
        parents: Iterable[Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        input_keys: Iterable[str | None] | None = None,
    ) -> Batch:
        """Record one invocation per input, all sharing a new batch id; see ``Batch``.

        ``parents`` and ``input_keys``, when given, line up with ``inputs``.
        """
        return Batch(
            self, execution_id, route_id, adapter_name, inputs, parents, metadata, input_keys
        )

    # ------------------------------------------------------------- control

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` seconds until every event recorded so far is
        acknowledged by Kafka. Returns how many are still on their way (0: all).

        The waiting is a sleep: delivery reports are served by the recorder's
        own thread, never the caller's.
        """
        if os.getpid() != self._pid:
            return 0  # inherited through fork, nothing recorded in this process yet
        try:
            pump = self._pump
            pump.wait(max(timeout, 0.0), lambda: pump.pending() == 0)
            return pump.pending()
        except Exception as e:
            self._internal_error("flush", e)
            return 0

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to ``timeout``, default ``config.close_timeout``),
        then stop. Events not delivered by then stay in the spool for the next
        recorder on the same spool directory (or ``factflow spool drain``).
        Afterwards every method is a no-op that counts ``dropped``."""
        if os.getpid() != self._pid:
            # Inherited through fork and never used here: nothing of this
            # process to deliver (the pump and librdkafka are the parent's).
            self._forked = False
            self._closed = True
            _LIVE.discard(self)
            return
        if self._closed:
            return
        self._closed = True
        try:
            if self._table is not None:
                # A clean close: this process did not die, so nothing it left
                # open is recorded as ended by a crash (an invocation handed
                # to a forked child may still be running there).
                self._table.close(remove=True)
            wait = self.config.close_timeout if timeout is None else max(timeout, 0.0)
            left = self._pump.close(wait)
            self._log.flush(everything=True)
            dropped = self.stats().dropped
            if dropped:
                LOGGER.warning(
                    "lineage recorder closed: %d events were dropped in its life, %d delivered "
                    "(see stats())",
                    dropped,
                    self._pump.delivered,
                )
            if left:
                where = (
                    f"those in the spool stay in {self._pump.spool.dir} for the next recorder "
                    "on that spool directory or `factflow spool drain`"
                    if self._pump.spool is not None
                    else "they are lost (the spool is off)"
                )
                LOGGER.warning(
                    "lineage recorder closed with %d events undelivered: %s", left, where
                )
        except Exception as e:
            self._internal_error("close", e)
        finally:
            _LIVE.discard(self)

    def stats(self) -> RecorderStats:
        """A snapshot of the recorder's counters."""
        if os.getpid() != self._pid:
            return self._inherited_stats()
        pump = self._pump
        try:
            queue = len(pump.producer)
        except Exception:  # a closed or broken producer has no queue to report
            queue = 0
        spool = pump.spool
        return RecorderStats(
            emitted=pump.emitted,
            delivered=pump.delivered,
            spooled=pump.spooled,
            unspooled=pump.unspooled,
            dropped=pump.dropped + pump.lost + pump.refused + self._dropped,
            delivery_errors=pump.delivery_errors + pump.refused,
            queue_depth=queue,
            backlog=pump.backlog_count,
            recovered=pump.recovered,
            recovering=len(pump.orphans) + (1 if pump.adopt_pending else 0),
            crash_closed=pump.crash_closed,
            metadata_coerced=self._metadata_coerced,
            hash_errors=self._hash_errors,
            repaired=self._repaired,
            errors=self._errors + pump.errors,
            spool_bytes=spool.reserved if spool is not None and not pump.closed else 0,
        )

    def _inherited_stats(self) -> RecorderStats:
        """Inherited through fork, never used here: only this process's drops count."""
        return RecorderStats(
            emitted=0,
            delivered=0,
            spooled=0,
            unspooled=0,
            dropped=self._dropped,
            delivery_errors=0,
            queue_depth=0,
            backlog=0,
            recovered=0,
            recovering=0,
            crash_closed=0,
            metadata_coerced=self._metadata_coerced,
            hash_errors=self._hash_errors,
            repaired=self._repaired,
            errors=self._errors,
            spool_bytes=0,
        )

    def __enter__(self) -> LineageRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<LineageRecorder {self._producer_id.hex()[:8]} topic={self.config.topic!r} {state}>"
        )

    # ------------------------------------------------------------ internal

    def _emit(self, event_type: str, key: bytes, payload: dict[str, Any]) -> None:
        """Encode, spool and produce one event. The hot path: no logging, no
        allocation beyond the event itself."""
        if self._closed and not (self._forked and self._reopen()):
            with self._counts_lock:
                self._dropped += 1
            return
        event = {
            "event_id": new_random_id(),
            "event_type": event_type,
            "occurred_at": _time_ns() // 1000,
            "producer_id": self._producer_id,
            "sequence": self._seq(),
            "payload": payload,
        }
        try:
            value = encode(event)
        except Exception:  # ValueError, or whatever a user's object raises inside
            value = self._encode_repaired(event)
            if value is None:
                return
        if len(value) > self._event_max:
            value = self._encode_shrunk(event)
            if value is None:
                return
        self._pump.submit(key, value)

    def _emit_begin(
        self,
        kind: int,
        ident: bytes,
        key: bytes,
        execution: bytes,
        event_type: str,
        payload: dict[str, Any],
    ) -> tuple[OpenTable | None, Slot | None]:
        """``_emit`` a start, bracketed by the open table (see ``_open``): the
        table and slot its end passes to ``_emit_end``."""
        if self._closed and self._forked:
            self._reopen()  # before the table is chosen: the child's own
        table = self._table
        if table is None or self._closed:
            self._emit(event_type, key, payload)
            return None, None
        slot = table.begin(kind, ident, key, execution)
        self._emit(event_type, key, payload)
        table.opened(slot)
        return table, slot

    def _emit_end(
        self,
        table: OpenTable | None,
        slot: Slot | None,
        ident: bytes,
        event_type: str,
        key: bytes,
        payload: dict[str, Any],
    ) -> None:
        """``_emit`` the end of what ``_emit_begin`` started."""
        if table is None:
            self._emit(event_type, key, payload)
            return
        table.ending(slot, ident)
        self._emit(event_type, key, payload)
        table.end(slot, ident)

    def _encode_repaired(self, event: dict[str, Any]) -> bytes | None:
        """The codec refused the event: make the user's values fit, then retry."""
        try:
            event["payload"] = self._fit(event["event_type"], event["payload"])
            data: bytes = encode(event)
        except Exception as e:  # still not encodable: the event is lost, and says why
            self._drop(event, f"it does not fit the event contract: {e!r}")
            return None
        return data

    def _fit(
        self, event_type: str, payload: dict[str, Any], notes: Notes | None = None
    ) -> dict[str, Any]:
        """``payload`` as the contract and the tables take it (``_events.fit_payload``),
        counted in ``metadata_coerced`` and ``repaired``."""
        fixed, coerced, noted = fit_payload(event_type, payload, notes)
        if coerced or noted:
            with self._counts_lock:
                self._metadata_coerced += coerced
                self._repaired += noted
        return fixed

    def _encode_shrunk(self, event: dict[str, Any]) -> bytes | None:
        """The event is over event_max_bytes: cut its free text and metadata."""
        payload = dict(event["payload"])
        for name in _TEXT_FIELDS:
            value = payload.get(name)
            if isinstance(value, str):
                payload[name] = truncate(value, SHRUNK_FIELD_BYTES)
        if payload.get("metadata"):
            payload["metadata"] = shrink_metadata(payload["metadata"], self._event_max // 2)
            with self._counts_lock:
                self._metadata_coerced += 1
        event["payload"] = payload
        try:
            data: bytes = encode(event)
        except ValueError as e:
            self._drop(event, f"it does not fit the event contract: {e}")
            return None
        if len(data) > self._event_max:
            self._drop(event, f"it is {len(data)} bytes even cut down")
            return None
        return data

    def _drop(self, event: dict[str, Any], why: str) -> None:
        with self._counts_lock:
            self._dropped += 1
            self._errors += 1
        self._log.error("encode", "lineage event %s dropped: %s", event.get("event_type"), why)

    def _hash_failed(self, what: str, error: Exception) -> None:
        with self._counts_lock:
            self._hash_errors += 1
        self._log.warning(
            "hash", "lineage: cannot hash the %s, recorded without a hash: %s", what, error
        )

    def _inherited(self) -> None:
        """Called in a forked child, where none of the parent's threads run:
        let go of the parent's pump and start again on the first event."""
        # A lock another parent thread held at the fork stays held forever here.
        self._counts_lock = threading.Lock()
        self._fork_lock = threading.Lock()
        self._log = RateLimitedLog(LOGGER, self.config.log_interval_s)
        self._pump.forget_after_fork()  # (its producer is kept: see _pump._after_fork)
        if self._table is not None:
            # Kept mapped: an invocation inherited from the parent and ended
            # here frees its slot in the parent's table (the mapping is shared).
            self._table.forget()
            self._table = None
        self._metadata_coerced = self._hash_errors = self._errors = self._dropped = 0
        self._repaired = 0
        if self._forked or not self._closed:
            # Lazily: a child that never records (one that calls exec next, a
            # prefork server's idle worker) makes no producer, thread or spool.
            self._forked = True
            self._closed = True

    def _reopen(self) -> bool:
        """The first event in a forked child: a producer id, sequence, pump and
        spool directory of this process, nothing of the parent's in-flight state
        (the parent delivers, or its spool keeps, what it recorded). Whether
        the recorder is open now."""
        with self._fork_lock:
            if self._forked:
                self._forked = False
                parent = self._producer_id
                try:
                    self._open()
                except Exception as e:  # stays closed: its events count as dropped
                    self._internal_error("fork", e)
                    return False
                self._closed = False
                _close_at_worker_exit(self)
                spool = self._pump.spool
                LOGGER.info(
                    "lineage recorder %s inherited through fork: pid %d records as %s, spool %s",
                    parent.hex()[:8],
                    self._pid,
                    self._producer_id.hex()[:8],
                    spool.dir if spool is not None else "off",
                )
        return not self._closed

    def _internal_error(self, where: str, error: BaseException) -> None:
        """The recorder's outer boundary: count, log (rate-limited), go on."""
        with self._counts_lock:
            self._errors += 1
        self._log.error(
            f"internal-{where}",
            "lineage recorder error in %s (ignored): %r",
            where,
            error,
            exc_info=error,
        )


# Live recorders (weakly: a recorder nobody uses can be collected): closed
# at interpreter exit, started again in a forked child.
_LIVE: weakref.WeakSet[LineageRecorder] = weakref.WeakSet()


def _close_all() -> None:
    for recorder in list(_LIVE):
        recorder.close()


def _close_ref(ref: weakref.ReferenceType[LineageRecorder]) -> None:
    recorder = ref()
    if recorder is not None:
        recorder.close()


def _close_at_worker_exit(recorder: LineageRecorder) -> None:
    """Close ``recorder`` when this multiprocessing worker ends.

    Its workers leave with os._exit after multiprocessing's own finalizers,
    without atexit: without this a pool worker's last events would wait in its
    spool for the next recorder (or ``factflow spool drain``) instead of being
    delivered. (Finalizers registered before the worker ran are cleared by
    multiprocessing itself, so this is done at the first event, in the worker.)
    """
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _close_ref, args=(weakref.ref(recorder),), exitpriority=0)


def _after_fork() -> None:
    # The child has the parent's spool mappings and flock but none of its
    # threads: writing there would corrupt the parent's spool, re-sending the
    # parent's queue would duplicate it. Each recorder starts again instead.
    if _LIVE:
        # What the parent left as garbage is never collected here: among it
        # may be librdkafka handles (a consumer, a producer) whose threads
        # stayed in the parent, and destroying one in the child is a SIGSEGV.
        # A recorder starting again allocates enough to run the collector.
        # (What CPython advises for prefork servers; the cost is that the
        # parent's garbage at the fork stays in the child's memory.)
        gc.freeze()
    for recorder in list(_LIVE):
        try:
            recorder._inherited()
        except Exception:  # never fail the fork: this recorder just stays closed here
            recorder._closed = True
            recorder._forked = False


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork)
