"""LocalStorage: keys, atomic writes, traversal refused, settings from the environment."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from factflow_lineage.errors import ConfigError, NotFound
from factflow_lineage.pipeline import (
    InvalidKey,
    LocalStorage,
    Storage,
    StorageSettings,
    message_key,
    stage_prefix,
    validate_key,
)

EXEC = "0191f1e2-7a3b-7c4d-8e5f-0123456789ab"


def test_message_key_layout() -> None:
    assert (
        message_key(EXEC, "sitemap_scraper", "web_scraper", "ab12")
        == f"executions/{EXEC}/sitemap_scraper/web_scraper/ab12"
    )
    assert stage_prefix(EXEC, "r", "s") == f"executions/{EXEC}/r/s"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "executions/../../outside",
        "a/./b",
        "a//b",
        "a/b/",
        "C:/windows",
        "a\\b",
        "a/b c",
        "a/.tmp-123",
        "a/\x00b",
        "x" * 1025,
    ],
)
def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path / "store")
    with pytest.raises(InvalidKey):
        storage.put(key, b"x")
    with pytest.raises(InvalidKey):
        storage.get(key)
    assert not (tmp_path / "outside").exists()
    assert isinstance(InvalidKey("x"), ConfigError)  # exit code 2 on the CLI


def test_message_key_refuses_a_traversing_part() -> None:
    with pytest.raises(InvalidKey):
        message_key(EXEC, "..", "stage", "m1")
    with pytest.raises(InvalidKey):
        message_key(EXEC, "route", "stage", "../../m1")


def test_put_get_exists_list(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert isinstance(storage, Storage)
    k1 = message_key(EXEC, "r", "s1", "m1")
    k2 = message_key(EXEC, "r", "s2", "m2")
    other = message_key("another", "r", "s1", "m3")
    storage.put(k1, b"one")
    storage.put(k2, b"\x00\xff two")
    storage.put(other, b"three")
    assert storage.get(k1) == b"one"
    assert storage.get(k2) == b"\x00\xff two"
    assert storage.exists(k1) and not storage.exists(k1 + "x")
    assert storage.size(k2) == len(b"\x00\xff two")
    with pytest.raises(NotFound):
        storage.size(k1 + "x")
    assert storage.list(f"executions/{EXEC}") == [k1, k2]
    assert storage.list(f"executions/{EXEC}/") == [k1, k2]
    assert storage.list(stage_prefix(EXEC, "r", "s2")) == [k2]
    assert storage.list(k1) == [k1]
    assert storage.list("executions/none") == []
    assert storage.list("") == sorted([k1, k2, other])


def test_put_replaces(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("a/b", b"first, longer")
    storage.put("a/b", b"second")
    assert storage.get("a/b") == b"second"


def test_get_missing_is_not_found(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("a/b", b"x")
    with pytest.raises(NotFound, match="'a/c' not found"):
        storage.get("a/c")
    with pytest.raises(NotFound):
        storage.get("a/b/c")  # a file where a folder would be
    with pytest.raises(NotFound):
        storage.get("a")  # a folder, not a key


def test_failed_write_leaves_old_bytes_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("a/b", b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        storage.put("a/b", b"new")
    monkeypatch.undo()
    assert storage.get("a/b") == b"old"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


def test_readers_never_see_a_partial_write(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    big = [bytes([i]) * 2_000_000 for i in range(1, 4)]
    storage.put("k", big[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = storage.get("k")
            seen.add(data[:1] + data[-1:] + len(data).to_bytes(4, "big"))

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(20):
        for blob in big:
            storage.put("k", blob)
    stop.set()
    reader.join()
    whole = {b[:1] + b[-1:] + len(b).to_bytes(4, "big") for b in big}
    assert seen and seen <= whole
    assert storage.list("") == ["k"]


def test_unwritable_root_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot write to storage"):
        LocalStorage(blocker / "store").put("a/b", b"x")


def test_settings_from_env(tmp_path: Path) -> None:
    assert StorageSettings.from_env({"FACTFLOW_STORAGE_DIR": str(tmp_path)}).dir == tmp_path
    xdg = StorageSettings.from_env({"XDG_DATA_HOME": str(tmp_path / "data")})
    assert xdg.dir == tmp_path / "data" / "factflow" / "storage"
    home = StorageSettings.from_env({"HOME": str(tmp_path / "home")})
    assert home.dir == tmp_path / "home" / ".local" / "share" / "factflow" / "storage"
    opened = StorageSettings.from_env({"FACTFLOW_STORAGE_DIR": str(tmp_path)}).open()
    assert opened.root == tmp_path


def test_validate_key_returns_the_key() -> None:
    assert validate_key("content/docs.example.com/guides/x.json") == (
        "content/docs.example.com/guides/x.json"
    )
