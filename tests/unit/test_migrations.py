from __future__ import annotations

from pathlib import Path

import pytest

from factflow_lineage.errors import MigrationError
from factflow_lineage.migrations import load_migrations, projection_migrations


def test_files_load_in_version_order_and_others_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "0002_second.sql").write_text("SELECT 2;")
    (tmp_path / "0010_tenth.sql").write_text("SELECT 10;")
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    (tmp_path / "1_bad_name.sql").write_text("SELECT 0;")
    migrations = load_migrations(tmp_path)
    assert [(m.version, m.name) for m in migrations] == [(1, "first"), (2, "second"), (10, "tenth")]


def test_two_files_with_one_number_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="two migrations numbered 0001"):
        load_migrations(tmp_path)


def test_checksum_follows_the_text(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    before = load_migrations(tmp_path)[0].checksum
    (tmp_path / "0001_a.sql").write_text("SELECT 2;")
    assert load_migrations(tmp_path)[0].checksum != before


def test_the_projection_migrations_ship_inside_the_package() -> None:
    migrations = projection_migrations()
    assert migrations, "consumer/migrations/*.sql must be package data"
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
