"""The REST API: the same queries as the CLI, over HTTP, on the read-only role.

``create_app(settings)`` builds a FastAPI app holding a psycopg connection
pool (opened and closed by the app's lifespan). Every ``/api/v1`` route is
guarded by the optional bearer token; ``/healthz`` (liveness, no database) and
``/readyz`` (the projection answers) never are.

Status codes: 404 unknown id, 422 malformed input (an id, a prefix that is
ambiguous, a cursor, a time), 503 when the database cannot answer, 401 for a
missing or wrong token. Bad input never reaches a 500.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import sql
from psycopg_pool import ConnectionPool

from factflow_lineage import __version__
from factflow_lineage.config import Settings
from factflow_lineage.db import set_search_path
from factflow_lineage.errors import ConfigError, DatabaseUnavailable, LineageError, NotFound

from . import _queries as q
from ._ids import parse_since
from ._models import (
    BatchResult,
    ChainResult,
    ExecutionRow,
    LineageRow,
    Page,
    StatsResult,
    to_json,
)
from ._settings import ApiSettings

R = TypeVar("R")
Status = Literal["pending", "completed", "failed", "cancelled"]
ExecutionStatus = Literal["running", "completed", "failed", "cancelled"]
Limit = Annotated[int, Query(ge=1, le=q.MAX_LIMIT)]
# Module level: FastAPI resolves the (string) annotations of the route
# functions in this module's globals, not in create_app's locals.
_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _error(status: int, error: LineageError) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=status)


def create_app(settings: Settings, api: ApiSettings | None = None) -> FastAPI:
    """The API app over ``settings.postgres.read_dsn``, schema ``settings.postgres.schema``."""
    api = api if api is not None else ApiSettings()
    schema = settings.postgres.schema
    statement_timeout_ms = int(api.statement_timeout * 1000)

    def configure(conn: Any) -> None:
        set_search_path(conn, schema)
        conn.execute(sql.SQL("SET statement_timeout = {}").format(statement_timeout_ms))

    pool = ConnectionPool(
        settings.postgres.read_dsn,
        min_size=1,
        max_size=api.pool_max,
        open=False,
        configure=configure,
        # A connection the server dropped (a restart) is replaced, not handed out.
        check=ConnectionPool.check_connection,
        # Autocommit: reads never leave a transaction open between requests.
        # No server-side prepared statements: a rebuild swaps the schema's
        # tables under a running API (see factflow_lineage.db.connect).
        kwargs={"autocommit": True, "prepare_threshold": None, "connect_timeout": 5},
        timeout=api.db_timeout,
        name="factflow-api",
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Not waiting: the API starts (and /healthz answers) while the
        # database is down; requests get a 503 until it is back.
        pool.open(wait=False)
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(
        title="factflow lineage",
        version=__version__,
        summary="Read-only queries over the lineage projection.",
        lifespan=lifespan,
    )
    app.add_exception_handler(NotFound, lambda _r, e: _error(404, e))
    app.add_exception_handler(ConfigError, lambda _r, e: _error(422, e))
    app.add_exception_handler(DatabaseUnavailable, lambda _r, e: _error(503, e))

    def authorised(credentials: Credentials) -> None:
        if api.token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        # Constant time: the comparison must not tell how much of a guess was right.
        if not hmac.compare_digest(given.encode(), api.token.encode()):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    def run(query: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        with q.database_errors(schema), pool.connection() as conn:
            return query(conn, *args, **kwargs)

    def reply(value: Any) -> JSONResponse:
        return JSONResponse(to_json(value))

    guarded = [Depends(authorised)]

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers (no database involved)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> dict[str, str]:
        """Readiness: the database answers and the projection's tables exist."""
        with q.database_errors(schema), pool.connection(timeout=min(api.db_timeout, 2.0)) as c:
            q.ping(c)
        return {"status": "ready"}

    # The fixed paths come before /lineage/{lineage_id}, which would swallow them.
    @app.get("/api/v1/lineage/failures", response_model=Page[LineageRow], dependencies=guarded)
    def lineage_failures(
        execution_id: str | None = None,
        since: Annotated[str | None, Query(description="ISO-8601 time or age: 30m, 1h, 2d")] = None,
        limit: Limit = 50,
        cursor: str | None = None,
    ) -> JSONResponse:
        """Failed rows, most recent first."""
        after = parse_since(since) if since is not None else None
        return reply(
            run(q.failures, execution=execution_id, since=after, limit=limit, cursor=cursor)
        )

    @app.get("/api/v1/lineage/stats", response_model=StatsResult, dependencies=guarded)
    def lineage_stats(execution_id: str) -> JSONResponse:
        """Counts per route and adapter of one execution."""
        return reply(run(q.stats, execution_id))

    @app.get("/api/v1/lineage/batches/{batch_id}", response_model=BatchResult, dependencies=guarded)
    def lineage_batch(batch_id: str) -> JSONResponse:
        """Every row of one batch and its outcome counts."""
        return reply(run(q.batch, batch_id))

    @app.get("/api/v1/lineage", response_model=Page[LineageRow], dependencies=guarded)
    def lineage_list(
        execution_id: str,
        status: Status | None = None,
        adapter: str | None = None,
        route: str | None = None,
        limit: Limit = 50,
        cursor: str | None = None,
    ) -> JSONResponse:
        """Rows of one execution, oldest first, filtered; keyset-paginated by ``cursor``."""
        return reply(
            run(
                q.list_lineage,
                execution=execution_id,
                status=status,
                adapter=adapter,
                route=route,
                limit=limit,
                cursor=cursor,
            )
        )

    @app.get("/api/v1/lineage/{lineage_id}", response_model=LineageRow, dependencies=guarded)
    def lineage_get(lineage_id: str) -> JSONResponse:
        """One row, every field (an id or a unique prefix of 8+ hex digits)."""
        return reply(run(q.get_lineage, lineage_id))

    @app.get("/api/v1/lineage/{lineage_id}/chain", response_model=ChainResult, dependencies=guarded)
    def lineage_chain(
        lineage_id: str,
        max_nodes: Annotated[int, Query(ge=1, le=q.MAX_NODES)] = q.DEFAULT_MAX_NODES,
    ) -> JSONResponse:
        """Ancestors to the root, the row, then its descendants, at most ``max_nodes``."""
        return reply(run(q.chain, lineage_id, max_nodes=max_nodes))

    @app.get(
        "/api/v1/lineage/{lineage_id}/children",
        response_model=Page[LineageRow],
        dependencies=guarded,
    )
    def lineage_children(
        lineage_id: str, limit: Limit = 100, cursor: str | None = None
    ) -> JSONResponse:
        """The rows this row produced."""
        return reply(run(q.children, lineage_id, limit=limit, cursor=cursor))

    @app.get("/api/v1/executions", response_model=Page[ExecutionRow], dependencies=guarded)
    def executions_list(
        status: ExecutionStatus | None = None,
        pipeline: str | None = None,
        limit: Limit = 50,
        cursor: str | None = None,
    ) -> JSONResponse:
        """Executions, most recently started first."""
        return reply(
            run(q.list_executions, status=status, pipeline=pipeline, limit=limit, cursor=cursor)
        )

    @app.get("/api/v1/executions/{execution_id}", response_model=ExecutionRow, dependencies=guarded)
    def executions_get(execution_id: str) -> JSONResponse:
        """Status, pipeline, times, counts, and what it replays."""
        return reply(run(q.get_execution, execution_id))

    app.state.pool = pool
    return app
