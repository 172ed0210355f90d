"""Message storage: where adapters' input messages are kept for debugging and replay.

Keys are ``/``-separated relative paths. A stage's input message lives under
``executions/{execution_id}/{route}/{stage}/{message_id}`` (``message_key``); the
lineage row of the invocation that consumed it names that key in
``metadata.input_key``, which is how an operator gets from a failing row to the
bytes that tripped the adapter, and how a replay finds the inputs to re-publish.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from factflow_lineage.errors import ConfigError, NotFound

# One key segment: what every file system and S3 accept without quoting, and
# nothing that could climb out of the storage root ("." and ".." are refused
# separately, since they match this pattern).
_SEGMENT = re.compile(r"^[A-Za-z0-9_.@=+-]{1,200}$")
_MAX_KEY = 1024
# Temporary files of an atomic write; never listed, never a valid key segment.
_TMP_PREFIX = ".tmp-"


class InvalidKey(ConfigError):
    """A storage key that is not a safe relative path (absolute, ``..``, odd characters)."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative storage key, else raise ``InvalidKey``."""
    if not key:
        raise InvalidKey("storage key is empty")
    if len(key) > _MAX_KEY:
        raise InvalidKey(f"storage key is longer than {_MAX_KEY} characters")
    if key.startswith("/") or "\\" in key or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(f"storage key {key!r} must be relative (no leading '/', no drive)")
    for segment in key.split("/"):
        if segment in {"", ".", ".."}:
            raise InvalidKey(
                f"storage key {key!r} has an empty, '.' or '..' segment; keys never leave the root"
            )
        if segment.startswith(_TMP_PREFIX) or not _SEGMENT.match(segment):
            raise InvalidKey(
                f"storage key {key!r}: segment {segment!r} may only use letters, digits and _.@=+-"
            )
    return key


def _validate_prefix(prefix: str) -> str:
    """A listing prefix: empty (everything) or a key, optionally ending in '/'."""
    stripped = prefix.rstrip("/")
    if stripped:
        validate_key(stripped)
    return stripped


def message_key(execution_id: str, route: str, stage: str, message_id: str) -> str:
    """The key of a stage's input message.

    ``executions/{execution_id}/{route}/{stage}/{message_id}``
    """
    return validate_key(f"{execution_prefix(execution_id)}/{route}/{stage}/{message_id}")


def execution_prefix(execution_id: str) -> str:
    """The prefix under which every stored message of one execution lives."""
    return validate_key(f"executions/{execution_id}")


def stage_prefix(execution_id: str, route: str, stage: str) -> str:
    """The prefix under which one stage's input messages of one execution live."""
    return validate_key(f"{execution_prefix(execution_id)}/{route}/{stage}")


@runtime_checkable
class Storage(Protocol):
    """What the pipeline needs from a blob store. Keys: see ``validate_key``."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there, atomically."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; ``NotFound`` when there are none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds bytes."""
        ...

    def size(self, key: str) -> int:
        """How many bytes ``key`` holds (without reading them); ``NotFound`` when none."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a key or a folder of keys), sorted."""
        ...


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """Where stored messages live. ``FACTFLOW_STORAGE_DIR`` overrides the default."""

    dir: Path = field(default_factory=lambda: default_storage_dir({}))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageSettings:
        """``FACTFLOW_STORAGE_DIR``, else ``$XDG_DATA_HOME/factflow/storage``."""
        env = os.environ if environ is None else environ
        raw = env.get("FACTFLOW_STORAGE_DIR", "").strip()
        return cls(dir=Path(raw).expanduser() if raw else default_storage_dir(env))

    def open(self) -> LocalStorage:
        """The storage these settings describe."""
        return LocalStorage(self.dir)


def default_storage_dir(env: Mapping[str, str]) -> Path:
    """The XDG data directory, so every shell of the user finds the same store."""
    # Not the current directory: `factflow storage get` run from another folder
    # than `factflow demo` must still find the bytes.
    data_home = env.get("XDG_DATA_HOME", "").strip()
    base = Path(data_home) if data_home else Path(env.get("HOME", "~")) / ".local" / "share"
    return base.expanduser() / "factflow" / "storage"


class LocalStorage:
    """A ``Storage`` in a local directory: one file per key, written atomically.

    A write goes to a temporary file in the target's directory and is renamed
    over the target with ``os.replace``, so a reader (or a crash) sees either the
    old bytes or the new ones, never half a message.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        except OSError as e:
            raise ConfigError(f"cannot write to storage {self.root}: {e.strerror or e}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"storage key {key!r} not found in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"storage key {key!r} not found in {self.root}")
        return path.stat().st_size

    def list(self, prefix: str) -> list[str]:
        prefix = _validate_prefix(prefix)
        start = self.root.joinpath(*prefix.split("/")) if prefix else self.root
        if start.is_file():
            return [prefix]
        if not start.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if not name.startswith(_TMP_PREFIX):
                    keys.append(name if rel == "." else f"{rel}/{name}")
        return sorted(keys)
