"""The recorder's configuration: one frozen object, built once at the entry point."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from factflow_lineage.config import DEFAULT_BOOTSTRAP, DEFAULT_TOPIC, Settings, env_bool, env_int
from factflow_lineage.errors import ConfigError

Compression = Literal["lz4", "zstd", "none"]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


def default_spool_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/factflow/spool``, or ``~/.local/state/factflow/spool``."""
    env = os.environ if environ is None else environ
    state = env.get("XDG_STATE_HOME", "").strip()
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "factflow" / "spool"


@dataclass(frozen=True, kw_only=True)
class RecorderConfig:
    """How a ``LineageRecorder`` talks to Kafka and keeps its crash spool.

    ``spool_dir`` holds one sub-directory per live recorder; ``None`` turns the
    spool off (then a full queue or a crash loses events, counted in ``dropped``).
    ``block_timeout`` is the longest a call may wait for room when an event can
    go nowhere else (spool off or full); the default 0 never waits.
    ``close_timeout`` bounds how long ``close()`` (and the close at interpreter
    exit) waits for Kafka; what is not delivered by then stays in the spool.
    ``kafka`` holds extra librdkafka settings, applied last (they win).
    """

    bootstrap: str = DEFAULT_BOOTSTRAP
    topic: str = DEFAULT_TOPIC
    spool_dir: Path | None = field(default_factory=default_spool_dir)
    spool_max_bytes: int = 1 * GIB
    # 16 MiB, not more: every segment is preallocated on disk (see _spool), a
    # segment is deleted only once all its records are acknowledged, and at
    # ~250 bytes an event one segment still holds ~60,000 events.
    segment_bytes: int = 16 * MIB
    block_timeout: float = 0.0
    queue_max_messages: int = 100_000
    queue_max_kbytes: int = 64 * KIB
    linger_ms: float = 5.0
    compression: Compression = "lz4"
    traceback_max_bytes: int = 16 * KIB
    error_message_max_bytes: int = 4 * KIB
    # Below the broker's default max.message.bytes (1 MiB), with room to spare:
    # an event above it has its free-text fields cut down instead of being
    # refused by the broker. (Never more than half a segment: see _recorder.)
    event_max_bytes: int = 256 * KIB
    # 0: the spool survives a crash of the process (page cache), not of the
    # machine. N > 0: the recorder's thread also syncs the spool to disk every
    # N seconds, so a power loss takes at most the last N seconds of events.
    fsync_interval_s: float = 0.0
    log_interval_s: float = 60.0
    close_timeout: float = 5.0
    adopt_interval_s: float = 60.0
    kafka: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spool_dir is not None and not isinstance(self.spool_dir, Path):
            # A str (or any os.PathLike) is what most callers have at hand.
            object.__setattr__(self, "spool_dir", Path(self.spool_dir))
        if not self.bootstrap.strip():
            raise ConfigError("bootstrap is empty")
        if self.segment_bytes < 64 * KIB:
            raise ConfigError(f"segment_bytes must be at least 64 KiB, not {self.segment_bytes}")
        if self.spool_max_bytes < 2 * self.segment_bytes:
            raise ConfigError(
                f"spool_max_bytes (FACTFLOW_SPOOL_MAX_BYTES) must hold at least two segments "
                f"of segment_bytes {self.segment_bytes}: at least {2 * self.segment_bytes}, "
                f"not {self.spool_max_bytes}"
            )
        if self.event_max_bytes < 64 * KIB:
            raise ConfigError(
                f"event_max_bytes must be at least 64 KiB, not {self.event_max_bytes}"
            )
        for name in (
            "block_timeout",
            "linger_ms",
            "log_interval_s",
            "close_timeout",
            "fsync_interval_s",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.compression not in ("lz4", "zstd", "none"):
            raise ConfigError(f"compression must be lz4, zstd or none, not {self.compression!r}")
        if self.traceback_max_bytes < 256 or self.error_message_max_bytes < 256:
            raise ConfigError("traceback_max_bytes and error_message_max_bytes must be >= 256")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RecorderConfig:
        """Build a config from ``FACTFLOW_*`` variables; ``overrides`` win.

        FACTFLOW_KAFKA_BOOTSTRAP and FACTFLOW_TOPIC as for every entry point;
        FACTFLOW_SPOOL_DIR (default ``$XDG_STATE_HOME/factflow/spool``);
        FACTFLOW_SPOOL=off turns the spool off; FACTFLOW_SPOOL_MAX_BYTES.
        """
        env = os.environ if environ is None else environ
        settings = Settings.from_env(env)
        spool_dir: Path | None = None
        if env_bool(env, "FACTFLOW_SPOOL", True):
            raw = env.get("FACTFLOW_SPOOL_DIR", "").strip()
            spool_dir = Path(raw).expanduser() if raw else default_spool_dir(env)
        values: dict[str, Any] = {
            "bootstrap": settings.kafka.bootstrap,
            "topic": settings.kafka.topic,
            "spool_dir": spool_dir,
            "spool_max_bytes": env_int(env, "FACTFLOW_SPOOL_MAX_BYTES", 1 * GIB),
        }
        values.update(overrides)
        return cls(**values)


def producer_settings(
    config: RecorderConfig, *, client_id: str, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> dict[str, Any]:
    """The librdkafka settings of the recorder's producer."""
    return {
        "bootstrap.servers": config.bootstrap,
        "client.id": client_id,
        # Idempotence: librdkafka's own retries (after a broken connection, a
        # leader change) never duplicate or reorder events within a partition.
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": config.compression,
        "linger.ms": config.linger_ms,
        # Bounded memory whatever the outage: past these, produce() raises
        # BufferError and the recorder spills to the spool (see _recorder).
        "queue.buffering.max.messages": config.queue_max_messages,
        "queue.buffering.max.kbytes": config.queue_max_kbytes,
        # Batches of up to ~1 MB / 10,000 events amortise the per-request cost at
        # 100k+ events/s; with linger.ms=5 a quiet pipeline still sees its events
        # on the topic within milliseconds.
        "batch.num.messages": 10_000,
        "batch.size": 1_000_000,
        # Infinite (0): an event librdkafka accepted is retried until the broker
        # takes it, however long the outage. A finite timeout would fail queued
        # events after it and force a re-send from the spool, which gives the
        # same result at the price of duplicates, and loses them without a spool.
        # Memory stays bounded because the queue is (queue.buffering.max.*).
        "message.timeout.ms": 0,
        # Reconnect within a second once a broker is back, not after 10 s.
        "reconnect.backoff.max.ms": 1000,
        "logger": logger,
        **dict(config.kafka),
    }
