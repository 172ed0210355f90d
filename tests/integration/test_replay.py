"""``factflow execution replay`` beyond the happy path, through the real entry point.

Lost inputs fail loudly with their keys; ``--to-route`` and ``--all``; nothing
to replay; a replay of a replay. Real broker, real database, own topic/schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from support.factflow_cli import Factflow


def _demo(factflow: Factflow) -> str:
    out = factflow("demo").stdout
    match = re.search(r"^execution ([0-9a-f-]{36}): failed", out, re.MULTILINE)
    assert match, out
    return match.group(1)


def _stats(factflow: Factflow, execution: str) -> dict[tuple[str, str], tuple[int, int, int]]:
    document = json.loads(factflow("lineage", "stats", "-e", execution, "-o", "json").stdout)
    return {
        (r["route_id"], r["adapter_name"]): (r["count"], r["completed"], r["failed"])
        for r in document["rows"]
    }


def _failed_keys(factflow: Factflow, execution: str) -> list[str]:
    page = json.loads(factflow("lineage", "failures", "-e", execution, "-o", "json").stdout)
    keys: list[str] = [row["input_key"] for row in page["rows"]]
    return keys


def test_lost_inputs_fail_loudly_listing_every_missing_key(
    factflow: Factflow, tmp_path: Path
) -> None:
    execution = _demo(factflow)
    lost = sorted(_failed_keys(factflow, execution))
    assert len(lost) == 2
    for key in lost:
        (tmp_path / "storage" / key).unlink()
    before = json.loads(factflow("execution", "list", "-o", "json").stdout)["rows"]

    done = factflow(
        "execution", "replay", execution, "--from-stage", "web_scraper", "--fixed", check=False
    )
    assert done.returncode == 1
    assert "no longer has 2 of the 2 inputs" in done.stderr
    for key in lost:
        assert key in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    # Nothing was started: no new execution.
    after = json.loads(factflow("execution", "list", "-o", "json").stdout)["rows"]
    assert [e["id"] for e in after] == [e["id"] for e in before]


def test_replay_into_another_route_and_everything(factflow: Factflow) -> None:
    execution = _demo(factflow)

    # --to-route: the fixed v2 route takes the two failed inputs; the original
    # route's scraper is still the broken one (no --fixed), so this proves the
    # messages ran through the other route.
    into_v2 = factflow(
        "execution",
        "replay",
        execution,
        "--from-stage",
        "web_scraper",
        "--to-route",
        "sitemap_scraper_v2",
    ).stdout.strip()
    assert _stats(factflow, into_v2) == {
        ("sitemap_scraper_v2", "web_scraper"): (2, 2, 0),
        ("sitemap_scraper_v2", "web_content_storage"): (2, 2, 0),
    }

    # Without the fix, the same two fail again: the replay really re-runs them.
    unfixed = factflow(
        "execution", "replay", execution, "--from-stage", "web_scraper"
    ).stdout.strip()
    assert _stats(factflow, unfixed) == {("sitemap_scraper", "web_scraper"): (2, 0, 2)}
    got = json.loads(factflow("execution", "get", unfixed, "-o", "json").stdout)
    assert got["status"] == "failed" and got["replay_of"] == execution

    # --all from url_expander: the whole fan-out runs again, upstream does not.
    everything = json.loads(
        factflow(
            "execution",
            "replay",
            execution,
            "--from-stage",
            "url_expander",
            "--all",
            "--fixed",
            "--output",
            "json",
        ).stdout
    )
    assert everything["replay_of"] == execution
    assert everything["status"] == "completed"
    assert len(everything["inputs"]) == 1
    assert _stats(factflow, everything["execution_id"]) == {
        ("sitemap_scraper", "url_expander"): (1, 1, 0),
        ("sitemap_scraper", "web_scraper"): (42, 42, 0),
        ("sitemap_scraper", "web_content_storage"): (42, 42, 0),
    }

    # Without --all, url_expander is replayed because a descendant failed.
    partial = json.loads(
        factflow(
            "execution",
            "replay",
            execution,
            "--from-stage",
            "url_expander",
            "--fixed",
            "-o",
            "json",
        ).stdout
    )
    assert len(partial["inputs"]) == 1
    assert partial["stages"]["web_scraper"] == {"completed": 42, "failed": 0}


def test_nothing_to_replay_and_a_replay_of_a_replay(factflow: Factflow) -> None:
    execution = _demo(factflow)
    first = factflow("execution", "replay", execution, "--from-stage", "web_scraper").stdout.strip()
    # The replay failed the same way; replaying the replay with the fix works,
    # from the inputs the first replay stored under its own execution.
    second = factflow(
        "execution", "replay", first, "--from-stage", "web_scraper", "--fixed"
    ).stdout.strip()
    got: dict[str, Any] = json.loads(factflow("execution", "get", second, "-o", "json").stdout)
    assert got["replay_of"] == first and got["status"] == "completed"
    rows = json.loads(factflow("lineage", "list", "-e", second, "-o", "json").stdout)["rows"]
    assert all(r["input_key"].startswith(f"executions/{second}/") for r in rows)

    done = factflow("execution", "replay", second, "--from-stage", "web_scraper", check=False)
    assert done.returncode == 1
    assert "nothing to replay" in done.stderr and "--all" in done.stderr

    unknown_stage = factflow(
        "execution", "replay", execution, "--from-stage", "scraper", check=False
    )
    assert unknown_stage.returncode == 1
    assert "no lineage rows of stage 'scraper'" in unknown_stage.stderr
    assert "web_scraper" in unknown_stage.stderr

    unknown_route = factflow(
        "execution",
        "replay",
        execution,
        "--from-stage",
        "web_scraper",
        "--to-route",
        "nope",
        check=False,
    )
    assert unknown_route.returncode == 1
    assert "no route 'nope'" in unknown_route.stderr

    missing = factflow(
        "execution",
        "replay",
        "00000000-0000-7000-8000-000000000000",
        "--from-stage",
        "x",
        check=False,
    )
    assert missing.returncode == 1
    assert "no execution" in missing.stderr


def test_storage_commands_refuse_bad_keys_and_report_missing_ones(factflow: Factflow) -> None:
    bad = factflow("storage", "get", "../../etc/passwd", check=False)
    assert bad.returncode == 2 and "never leave the root" in bad.stderr
    gone = factflow("storage", "get", "executions/nope/r/s/m", check=False)
    assert gone.returncode == 1 and "not found" in gone.stderr
    empty = factflow(
        "storage", "list", "--execution", "00000000-0000-7000-8000-000000000000", check=False
    )
    assert empty.returncode == 1 and "holds nothing" in empty.stderr
