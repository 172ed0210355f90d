"""The REST API against the real PostgreSQL, over real HTTP (uvicorn on a free port).

Same known dataset as the CLI tests (``support.query_dataset``): every endpoint of the
guide, pagination, prefixes, bad input (never a 500), the bearer token, and
the database away (503, JSON) or never initialised.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from factflow_lineage.config import PostgresSettings, Settings
from factflow_lineage.query._api import create_app
from factflow_lineage.query._settings import ApiSettings
from support.query_dataset import BATCHES, E1, E2, FAILED, Dataset, load

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def projection(pg_dsn: str, pg_schema: str) -> Dataset:
    """The known dataset (see support.query_dataset), in this test's own schema."""
    return load(pg_dsn, pg_schema)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serving(app: Any) -> Iterator[httpx.Client]:
    """``app`` served by uvicorn in a thread (lifespan included); a client bound to it."""
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = sock.getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def _settings(schema: str, read_dsn: str) -> Settings:
    return Settings(postgres=PostgresSettings(read_dsn=read_dsn, schema=schema))


@pytest.fixture
def api(projection: Dataset, pg_read_dsn: str) -> Iterator[httpx.Client]:
    """A client of the API over the dataset, with the bearer token required."""
    app = create_app(_settings(projection.schema, pg_read_dsn), ApiSettings(token=TOKEN))
    with serving(app) as client:
        client.headers.update(AUTH)
        yield client


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def pages(api: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        doc = ok(api.get(path, params={**params, **({"cursor": cursor} if cursor else {})}))
        rows += doc["rows"]
        cursor = doc["next_cursor"]
        if cursor is None:
            return rows


# --- the guide's endpoints ----------------------------------------------------------


def test_list_with_filters(api: httpx.Client, projection: Dataset) -> None:
    failed = ok(api.get("/api/v1/lineage", params={"execution_id": str(E1), "status": "failed"}))
    assert sorted(r["id"] for r in failed["rows"]) == sorted(str(f) for f in FAILED)
    assert failed["next_cursor"] is None
    scrapers = pages(api, "/api/v1/lineage", execution_id=str(E1), adapter="web_scraper")
    assert len(scrapers) == 42 and {r["adapter_name"] for r in scrapers} == {"web_scraper"}
    routed = pages(api, "/api/v1/lineage", execution_id=str(E1)[:8], route="sitemap_scraper")
    assert len(routed) == 84


def test_list_pages_have_no_gaps_and_no_duplicates(api: httpx.Client, projection: Dataset) -> None:
    for limit in (1, 7, 50, 1000):
        rows = pages(api, "/api/v1/lineage", execution_id=str(E1), limit=limit)
        assert len(rows) == 84 and len({r["id"] for r in rows}) == 84, limit
        keys = [(r["started_at"], r["id"]) for r in rows]
        assert keys == sorted(keys)
    tail = pages(api, "/api/v1/lineage", execution_id=str(E2), limit=2)
    assert tail[-1]["id"] == str(projection.placeholder) and tail[-1]["started_at"] is None


def test_get_one_row(api: httpx.Client, projection: Dataset) -> None:
    want = projection.rows[FAILED[1]]
    got = ok(api.get(f"/api/v1/lineage/{FAILED[1]}"))
    assert got["id"] == str(FAILED[1]) and got["parent_id"] == str(projection.expander)
    assert got["error"] == want["error"] and got["metadata"] == want["metadata"]
    assert got["batch_id"] == str(BATCHES[1])
    by_prefix = ok(api.get(f"/api/v1/lineage/{str(projection.root)[:8]}"))
    assert by_prefix["id"] == str(projection.root)


def test_chain_forward_and_backward(api: httpx.Client, projection: Dataset) -> None:
    up = ok(api.get(f"/api/v1/lineage/{FAILED[0]}/chain"))
    assert [n["id"] for n in up["nodes"]] == [
        str(projection.root), str(projection.expander), str(FAILED[0])
    ]  # fmt: skip
    down = ok(api.get(f"/api/v1/lineage/{projection.expander}/chain"))
    assert len(down["nodes"]) == 84 and down["truncated"] is False  # root, itself, 82 below
    cut = ok(api.get(f"/api/v1/lineage/{projection.root}/chain", params={"max_nodes": 5}))
    assert len(cut["nodes"]) == 5 and cut["truncated"] is True and cut["max_nodes"] == 5


def test_children(api: httpx.Client, projection: Dataset) -> None:
    kids = pages(api, f"/api/v1/lineage/{projection.expander}/children", limit=9)
    assert {r["id"] for r in kids} == {str(s) for s in projection.scrapers}
    assert len(kids) == 42
    assert ok(api.get(f"/api/v1/lineage/{FAILED[0]}/children"))["rows"] == []


def test_failures(api: httpx.Client, projection: Dataset) -> None:
    every = ok(api.get("/api/v1/lineage/failures"))
    assert [r["id"] for r in every["rows"]] == [str(FAILED[1]), str(FAILED[0])]
    scoped = ok(api.get("/api/v1/lineage/failures", params={"execution_id": str(E2)}))
    assert scoped["rows"] == []
    since = projection.rows[FAILED[1]]["completed_at"].isoformat()
    recent = ok(api.get("/api/v1/lineage/failures", params={"since": since, "limit": 10}))
    assert [r["id"] for r in recent["rows"]] == [str(FAILED[1])]


def test_stats(api: httpx.Client) -> None:
    doc = ok(api.get("/api/v1/lineage/stats", params={"execution_id": str(E1)}))
    assert [
        (r["route_id"], r["adapter_name"], r["count"], r["completed"], r["failed"], r["pending"])
        for r in doc["rows"]
    ] == [
        ("sitemap_scraper", "sitemap_parser", 1, 1, 0, 0),
        ("sitemap_scraper", "url_expander", 1, 1, 0, 0),
        ("sitemap_scraper", "web_scraper", 42, 40, 2, 0),
        ("sitemap_scraper", "web_content_storage", 40, 40, 0, 0),
    ]


def test_batch(api: httpx.Client) -> None:
    doc = ok(api.get(f"/api/v1/lineage/batches/{BATCHES[0]}"))
    assert (doc["batch_id"], doc["completed"], doc["failed"], len(doc["rows"])) == (
        str(BATCHES[0]), 20, 1, 21,
    )  # fmt: skip


def test_executions(api: httpx.Client) -> None:
    replay = ok(api.get(f"/api/v1/executions/{E2}"))
    assert replay["replay_of"] == str(E1) and replay["replay_from_stage"] == "web_scraper"
    assert replay["status"] == "running" and replay["pending"] == 2
    first = ok(api.get(f"/api/v1/executions/{str(E1)[:8]}"))
    assert (first["status"], first["total"], first["failed"]) == ("failed", 84, 2)
    listed = pages(api, "/api/v1/executions", limit=1)
    assert [r["id"] for r in listed] == [str(E2), str(E1)]


# --- errors: 404, 422, never 500 ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/lineage/12345678-1234-4234-8234-123456789abc",
        "/api/v1/lineage/12345678",
        "/api/v1/lineage/12345678-1234-4234-8234-123456789abc/chain",
        "/api/v1/lineage/12345678-1234-4234-8234-123456789abc/children",
        "/api/v1/lineage/batches/12345678-1234-4234-8234-123456789abc",
        "/api/v1/lineage/stats?execution_id=12345678-1234-4234-8234-123456789abc",
        "/api/v1/executions/12345678-1234-4234-8234-123456789abc",
        "/api/v1/lineage?execution_id=12345678",
    ],
)
def test_unknown_ids_are_404(api: httpx.Client, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 404, response.text
    assert "12345678" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/api/v1/lineage/deadbeef", "ambiguous"),
        ("/api/v1/lineage/deadbee", "too short"),
        ("/api/v1/lineage/not-a-uuid", "malformed lineage id"),
        ("/api/v1/lineage/%F0%9F%92%A5", "malformed lineage id"),
        ("/api/v1/lineage/batches/bbbbbbbb", "ambiguous"),
        ("/api/v1/executions/xyz", "malformed execution id"),
        ("/api/v1/lineage?execution_id=e1e1e1e1&cursor=nonsense", "invalid cursor"),
        ("/api/v1/lineage/failures?since=someday", "invalid since"),
    ],
)
def test_malformed_input_is_422_with_a_message(api: httpx.Client, path: str, fragment: str) -> None:
    response = api.get(path)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/lineage",  # execution_id is required
        "/api/v1/lineage?execution_id=e1e1e1e1&status=bogus",
        "/api/v1/lineage?execution_id=e1e1e1e1&limit=0",
        "/api/v1/lineage?execution_id=e1e1e1e1&limit=abc",
        "/api/v1/lineage?execution_id=e1e1e1e1&limit=100000",
        "/api/v1/lineage/deadbeef-0000-4000-8000-000000000001/chain?max_nodes=-1",
        "/api/v1/lineage/stats",
        "/api/v1/lineage/failures?limit=",
        "/api/v1/executions?status=sleeping",
    ],
)
def test_invalid_parameters_are_422(api: httpx.Client, path: str) -> None:
    assert api.get(path).status_code == 422


def test_a_cursor_from_another_listing_is_422(api: httpx.Client) -> None:
    cursor = ok(api.get("/api/v1/executions", params={"limit": 1}))["next_cursor"]
    response = api.get("/api/v1/lineage", params={"execution_id": str(E1), "cursor": cursor})
    assert response.status_code == 422 and "another listing" in response.json()["detail"]


def test_fixed_paths_are_not_taken_for_ids(api: httpx.Client) -> None:
    # /lineage/failures and /lineage/stats must not reach /lineage/{lineage_id}.
    assert "rows" in ok(api.get("/api/v1/lineage/failures"))
    stats = api.get("/api/v1/lineage/stats")
    assert stats.status_code == 422 and "execution_id" in stats.text


# --- the token --------------------------------------------------------------------------


def test_the_token_guards_every_api_route_but_not_health(
    api: httpx.Client, projection: Dataset
) -> None:
    paths = [
        f"/api/v1/lineage?execution_id={E1}",
        f"/api/v1/lineage/{FAILED[0]}",
        f"/api/v1/lineage/{FAILED[0]}/chain",
        f"/api/v1/lineage/{FAILED[0]}/children",
        "/api/v1/lineage/failures",
        f"/api/v1/lineage/stats?execution_id={E1}",
        f"/api/v1/lineage/batches/{BATCHES[0]}",
        f"/api/v1/executions/{E1}",
        "/api/v1/executions",
    ]
    for path in paths:
        assert api.get(path).status_code == 200, path
        missing = api.get(path, headers={"Authorization": ""})
        assert missing.status_code == 401, path
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = api.get(path, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401 and wrong.json() == {
            "detail": "missing or wrong bearer token"
        }
        basic = api.get(path, headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
    for path in ("/healthz", "/readyz"):
        assert api.get(path, headers={"Authorization": ""}).status_code == 200


def test_without_a_token_configured_no_header_is_needed(
    projection: Dataset, pg_read_dsn: str
) -> None:
    with serving(create_app(_settings(projection.schema, pg_read_dsn))) as client:
        assert ok(client.get(f"/api/v1/lineage/{FAILED[0]}"))["status"] == "failed"


# --- health, the database away, the OpenAPI document ------------------------------------


def test_health_and_readiness(api: httpx.Client) -> None:
    assert ok(api.get("/healthz")) == {"status": "ok"}
    assert ok(api.get("/readyz")) == {"status": "ready"}


def test_database_down_is_503_json_and_liveness_still_answers(projection: Dataset) -> None:
    settings = _settings(projection.schema, "postgresql://factflow_reader:pw@127.0.0.1:1/factflow")
    app = create_app(settings, ApiSettings(db_timeout=0.5))
    with serving(app) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/readyz", f"/api/v1/lineage/{FAILED[0]}", "/api/v1/lineage/failures"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert "no database connection available" in response.json()["detail"]


def test_projection_not_initialised_is_503_saying_run_init(pg_read_dsn: str) -> None:
    app = create_app(_settings("test_never_initialised", pg_read_dsn))
    with serving(app) as client:
        for path in ("/readyz", "/api/v1/lineage/failures", f"/api/v1/executions/{E1}"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert "run `factflow init`" in response.json()["detail"]


def test_openapi_document_lists_every_endpoint(api: httpx.Client) -> None:
    doc = ok(api.get("/openapi.json"))
    assert set(doc["paths"]) == {
        "/healthz", "/readyz", "/api/v1/lineage", "/api/v1/lineage/{lineage_id}",
        "/api/v1/lineage/{lineage_id}/chain", "/api/v1/lineage/{lineage_id}/children",
        "/api/v1/lineage/failures", "/api/v1/lineage/stats", "/api/v1/lineage/batches/{batch_id}",
        "/api/v1/executions", "/api/v1/executions/{execution_id}",
    }  # fmt: skip
    error = doc["components"]["schemas"]["ErrorInfo"]["properties"]
    assert set(error) == {"class", "message", "traceback"}  # the JSON key, as served
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


def test_factflow_api_serve(projection: Dataset, pg_read_dsn: str) -> None:
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "FACTFLOW_PG_SCHEMA": projection.schema,
        "FACTFLOW_PG_READ_DSN": pg_read_dsn,
        "FACTFLOW_API_TOKEN": TOKEN,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "factflow_lineage", "api", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "factflow api serve did not answer"
                time.sleep(0.1)
        assert httpx.get(f"{url}/api/v1/lineage/failures").status_code == 401
        doc = httpx.get(f"{url}/api/v1/lineage/failures", headers=AUTH).json()
        assert [r["id"] for r in doc["rows"]] == [str(FAILED[1]), str(FAILED[0])]
    finally:
        process.terminate()
        process.communicate(timeout=15)


def test_concurrent_requests_share_the_pool(api: httpx.Client, projection: Dataset) -> None:
    ids = [str(i) for i in list(projection.rows)[:40]]
    results: list[int] = []
    lock = threading.Lock()

    def fetch(chunk: list[str]) -> None:
        for ident in chunk:
            code = api.get(f"/api/v1/lineage/{ident}").status_code
            with lock:
                results.append(code)

    threads = [threading.Thread(target=fetch, args=(ids[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 40
