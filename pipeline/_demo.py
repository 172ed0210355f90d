"""The demo pipeline: route ``sitemap_scraper`` over a sitemap and a web site shipped as fixtures.

No network: ``FixtureWeb`` answers for ``https://docs.example.com`` from the
files in ``fixtures/`` (``sitemap.xml``, ``site/<section>--<page>.html``, and
``upstream.json``, which lists URLs the upstream answers with a transient 503).

Stages: ``sitemap_parser`` (sitemap XML -> one JSON list of entries),
``url_expander`` (that list -> one message per URL: 42), ``web_scraper`` (fetch
and extract title and text), ``web_content_storage`` (store the page; a sink).

The scraper as first deployed has two bugs, each tripped by exactly one page:
it does not retry a transient ``503 Service Unavailable``, and it decodes every
page as UTF-8 although one declares ``iso-8859-1``. ``fixed=True`` is the
redeployed scraper: it retries 503s and honours the declared charset.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib import resources
from importlib.resources.abc import Traversable
from urllib.parse import urlsplit

from ._engine import Message, Route, Stage
from ._storage import Storage, validate_key

PIPELINE = "factflow-demo"
ROUTE = "sitemap_scraper"
# The same stages with the fixed scraper always deployed: a replay target for
# `--to-route`, as a team would ship a new version of a route beside the old one.
ROUTE_V2 = "sitemap_scraper_v2"
STAGES = ("sitemap_parser", "url_expander", "web_scraper", "web_content_storage")
SITE = "https://docs.example.com"
SITEMAP_URL = f"{SITE}/sitemap.xml"

_SITEMAP_NS = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
_CHARSET = re.compile(rb"""<meta\s+charset=["']?([A-Za-z0-9_-]+)""", re.IGNORECASE)
_MAX_ATTEMPTS = 3


class UpstreamUnavailable(Exception):
    """The site answered with a 5xx status (what an HTTP client's raise_for_status says)."""


class NotInFixtures(Exception):
    """A URL outside the shipped site (the demo's 404)."""


def _fixtures() -> Traversable:
    return resources.files("factflow_lineage.pipeline").joinpath("fixtures")


def sitemap_bytes() -> bytes:
    """The shipped sitemap, as the pipeline's first message receives it."""
    return _fixtures().joinpath("sitemap.xml").read_bytes()


@dataclass(frozen=True)
class Response:
    """What ``FixtureWeb.get`` answers: status, content type and body bytes."""

    status: int
    content_type: str
    body: bytes


class FixtureWeb:
    """A web site served from the fixtures, with an upstream that has a bad moment.

    Each URL listed in ``upstream.json``'s ``transient_503`` answers its first
    request with 503 and the following ones with the page, as a real upstream
    recovering after a deploy would.
    """

    def __init__(self) -> None:
        upstream = json.loads(_fixtures().joinpath("upstream.json").read_text("utf-8"))
        self._transient = set(upstream["transient_503"])
        self._requests: dict[str, int] = {}

    def get(self, url: str) -> Response:
        self._requests[url] = self._requests.get(url, 0) + 1
        parts = urlsplit(url)
        path = parts.path.strip("/")
        if f"{parts.scheme}://{parts.netloc}" != SITE or path.count("/") != 1:
            raise NotInFixtures(f"404 Not Found for {url}")
        page = _fixtures().joinpath("site", path.replace("/", "--") + ".html")
        if not page.is_file():
            raise NotInFixtures(f"404 Not Found for {url}")
        if url in self._transient and self._requests[url] == 1:
            return Response(503, "text/html; charset=utf-8", b"<h1>503 Service Unavailable</h1>")
        body = page.read_bytes()
        match = _CHARSET.search(body)
        charset = match.group(1).decode("ascii").lower() if match else "utf-8"
        return Response(200, f"text/html; charset={charset}", body)


def parse_sitemap(data: bytes) -> list[dict[str, str]]:
    """The ``<url>`` entries of a sitemap: ``loc`` and, when given, ``lastmod``."""
    root = ET.fromstring(data)
    entries = []
    for url in root.iter(f"{_SITEMAP_NS}url"):
        loc = url.findtext(f"{_SITEMAP_NS}loc")
        if not loc or not loc.strip():
            raise ValueError("sitemap <url> without <loc>")
        entry = {"loc": loc.strip()}
        lastmod = url.findtext(f"{_SITEMAP_NS}lastmod")
        if lastmod:
            entry["lastmod"] = lastmod.strip()
        entries.append(entry)
    return entries


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sitemap_parser(message: Message) -> Iterator[Message]:
    """Sitemap XML in, one JSON message listing its entries out."""
    yield Message(data=_json({"entries": parse_sitemap(message.data)}))


def url_expander(message: Message) -> Iterator[Message]:
    """One message listing a sitemap's entries in, one message per URL out."""
    for entry in json.loads(message.data)["entries"]:
        yield Message(data=_json({"url": entry["loc"], "lastmod": entry.get("lastmod")}))


class _TextExtractor(HTMLParser):
    """Title, first heading and visible paragraph text of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.heading = ""
        self.paragraphs: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"title", "h1", "p"}:
            self._in = tag
            if tag == "p":
                self.paragraphs.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "h1" and not self.heading:
            self.heading = data
        elif self._in == "p":
            self.paragraphs[-1] += data


class WebScraper:
    """Fetch the URL of a message and extract the page; ``fixed`` is the redeployed version."""

    def __init__(self, web: FixtureWeb, *, fixed: bool) -> None:
        self.web = web
        self.fixed = fixed

    def __call__(self, message: Message, /) -> list[Message]:
        request = json.loads(message.data)
        url = request["url"]
        response = self._fetch(url)
        if self.fixed:
            charset = response.content_type.partition("charset=")[2] or "utf-8"
            html = response.body.decode(charset)
        else:
            # The bug the demo replays away: the declared charset is ignored.
            html = response.body.decode("utf-8")
        page = _TextExtractor()
        page.feed(html)
        page.close()
        document = {
            "url": url,
            "lastmod": request.get("lastmod"),
            "title": (page.title or page.heading).strip(),
            "text": "\n".join(p.strip() for p in page.paragraphs if p.strip()),
        }
        return [Message(data=_json(document), headers={"content-type": "application/json"})]

    def _fetch(self, url: str) -> Response:
        attempts = _MAX_ATTEMPTS if self.fixed else 1
        for _ in range(attempts):
            response = self.web.get(url)
            if response.status < 500:
                break
        if response.status >= 500:
            raise UpstreamUnavailable(f"{response.status} Service Unavailable for {url}")
        return response


def content_key(url: str) -> str:
    """Where ``web_content_storage`` keeps a page: ``content/{host}/{path}.json``."""
    parts = urlsplit(url)
    return validate_key(f"content/{parts.netloc}/{parts.path.strip('/')}.json")


class WebContentStorage:
    """The sink: stores each scraped page under ``content_key(url)``, latest wins."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def __call__(self, message: Message, /) -> list[Message]:
        document = json.loads(message.data)
        if not document.get("title"):
            raise ValueError(f"page {document.get('url')!r} has no title: not stored")
        self.storage.put(content_key(document["url"]), message.data)
        return []


def demo_routes(storage: Storage, *, fixed: bool = False) -> Mapping[str, Route]:
    """The demo's routes by id: ``sitemap_scraper`` (its scraper fixed only with ``fixed``)
    and ``sitemap_scraper_v2`` (always the fixed scraper)."""
    web = FixtureWeb()
    sink = WebContentStorage(storage)

    def route(name: str, scraper: WebScraper) -> Route:
        return Route(
            name,
            (
                Stage("sitemap_parser", sitemap_parser),
                Stage("url_expander", url_expander),
                Stage("web_scraper", scraper),
                Stage("web_content_storage", sink),
            ),
        )

    return {
        ROUTE: route(ROUTE, WebScraper(web, fixed=fixed)),
        ROUTE_V2: route(ROUTE_V2, WebScraper(web, fixed=True)),
    }


def sitemap_message() -> Message:
    """The demo's first message: the sitemap XML as fetched from ``SITEMAP_URL``."""
    return Message(
        data=sitemap_bytes(),
        headers={"source-url": SITEMAP_URL, "content-type": "application/xml"},
    )
