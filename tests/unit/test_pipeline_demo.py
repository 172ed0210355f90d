"""The demo pipeline's pure parts: fixtures, adapters, routes (no broker needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factflow_lineage.errors import ConfigError
from factflow_lineage.pipeline import LocalStorage, Message, Route, Stage, demo_routes
from factflow_lineage.pipeline import _demo as demo


def _url_messages() -> list[Message]:
    (parsed,) = demo.sitemap_parser(demo.sitemap_message())
    return list(demo.url_expander(parsed))


def test_the_sitemap_expands_to_42_distinct_urls() -> None:
    urls = [json.loads(m.data)["url"] for m in _url_messages()]
    assert len(urls) == 42
    assert len(set(urls)) == 42
    assert all(u.startswith(demo.SITE + "/") for u in urls)


def test_every_url_has_a_page_in_the_fixtures() -> None:
    web = demo.FixtureWeb()
    for message in _url_messages():
        url = json.loads(message.data)["url"]
        response = web.get(url)
        if response.status == 503:  # the one transient failure answers the second time
            response = web.get(url)
        assert response.status == 200
        assert response.body.startswith(b"<!DOCTYPE html>")


def _outcomes(fixed: bool) -> tuple[list[dict[str, str]], list[BaseException]]:
    scraper = demo.WebScraper(demo.FixtureWeb(), fixed=fixed)
    pages: list[dict[str, str]] = []
    errors: list[BaseException] = []
    for message in _url_messages():
        try:
            (out,) = scraper(message)
            pages.append(json.loads(out.data))
        except Exception as e:
            errors.append(e)
    return pages, errors


def test_the_scraper_as_deployed_fails_on_exactly_two_pages() -> None:
    pages, errors = _outcomes(fixed=False)
    assert len(pages) == 40
    assert sorted(type(e).__name__ for e in errors) == ["UnicodeDecodeError", "UpstreamUnavailable"]
    assert any("503 Service Unavailable for https://docs.example.com/" in str(e) for e in errors)


def test_the_fixed_scraper_gets_all_42() -> None:
    pages, errors = _outcomes(fixed=True)
    assert errors == []
    assert len(pages) == 42
    latin = next(p for p in pages if p["url"].endswith("/blog/2025-03-event-sourcing"))
    assert "café" in latin["text"]  # decoded with the declared charset, not mangled
    assert all(p["title"].endswith("| Factflow docs") for p in pages)


def test_the_upstream_recovers_after_one_503() -> None:
    web = demo.FixtureWeb()
    url = f"{demo.SITE}/guides/backpressure"
    assert web.get(url).status == 503
    assert web.get(url).status == 200


def test_unknown_urls_are_a_404() -> None:
    web = demo.FixtureWeb()
    for url in (
        f"{demo.SITE}/nope/nope",
        "https://elsewhere.example/guides/batching",
        f"{demo.SITE}/../../etc/passwd",
    ):
        with pytest.raises(demo.NotInFixtures):
            web.get(url)


def test_the_sink_stores_pages_and_emits_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    sink = demo.WebContentStorage(storage)
    doc = {"url": f"{demo.SITE}/guides/batching", "title": "Batching", "text": "t"}
    assert sink(Message(data=json.dumps(doc).encode())) == []
    assert json.loads(storage.get("content/docs.example.com/guides/batching.json")) == doc
    with pytest.raises(ValueError, match="no title"):
        sink(Message(data=json.dumps({**doc, "title": ""}).encode()))


def test_demo_route_stages_in_order(tmp_path: Path) -> None:
    route = demo_routes(LocalStorage(tmp_path))[demo.ROUTE]
    assert route.stage_names == demo.STAGES
    assert route.index("web_scraper") == 2
    with pytest.raises(ConfigError, match=r"no stage 'scraper'.*sitemap_parser, url_expander"):
        route.index("scraper")


def _noop(message: Message) -> list[Message]:
    return []


@pytest.mark.parametrize(
    ("route_id", "stages"),
    [
        ("r", ()),
        ("r", ("a", "a")),
        ("../r", ("a",)),
        ("r", ("a/b",)),
        ("r", ("",)),
    ],
)
def test_bad_routes_are_refused(route_id: str, stages: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        Route(route_id, tuple(Stage(name, _noop) for name in stages))


def test_sitemap_without_loc_is_a_parse_error() -> None:
    bad = (
        b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        b"<url><lastmod>2025-01-01</lastmod></url></urlset>"
    )
    with pytest.raises(ValueError, match="without <loc>"):
        demo.parse_sitemap(bad)
