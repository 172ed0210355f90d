"""The operator's commands: ``factflow lineage ...``, ``factflow execution ...``, ``factflow api``.

Each command builds ``Settings`` once, opens one read-only connection, calls
the shared query module and prints a table (or, with ``--output json``, one
JSON document). Errors are ``LineageError``s: the root app turns them into one
line on stderr and exit code 1 (not found, database down) or 2 (usage).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from factflow_lineage.cli import Output, OutputOpt
from factflow_lineage.config import Settings
from factflow_lineage.db import connect
from factflow_lineage.errors import ConfigError

from . import _format as fmt
from . import _queries as q
from ._ids import parse_since
from ._models import Page

LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, max=q.MAX_LIMIT, help="Rows.")]
CursorOpt = Annotated[
    str | None, typer.Option("--cursor", help="Continue after a page (its next_cursor).")
]
ExecutionOpt = Annotated[
    str, typer.Option("--execution", "-e", help="Execution id (or a unique 8+ hex prefix).")
]
LineageArg = Annotated[str, typer.Argument(help="Lineage id (or a unique 8+ hex prefix).")]

lineage_app = typer.Typer(
    name="lineage", help="Find failures, walk chains, audit what ran.", no_args_is_help=True
)
execution_app = typer.Typer(
    name="execution", help="Pipeline runs: status, counts, replays.", no_args_is_help=True
)
api_app = typer.Typer(name="api", help="The read-only REST API.", no_args_is_help=True)


@contextmanager
def _reader() -> Iterator[Any]:
    """One read-only connection to the projection, its errors translated for the operator."""
    settings = Settings.from_env()
    schema = settings.postgres.schema
    with (
        q.database_errors(schema),
        connect(settings.postgres.read_dsn, schema=schema, autocommit=True) as conn,
    ):
        yield conn


def _style() -> fmt.Style:
    return fmt.Style(colour=sys.stdout.isatty())


def _print_page(page: Page[Any], output: Output, columns: tuple[fmt.Column, ...]) -> None:
    if output is Output.json:
        typer.echo(fmt.dumps(page))
        return
    if page.rows:
        typer.echo(fmt.table(columns, page.rows, _style()))
    else:
        typer.echo("(no rows)")
    if page.next_cursor is not None:
        # On stderr: the table on stdout stays clean for grep and friends.
        typer.echo(f"more rows: add --cursor {page.next_cursor}", err=True)


@lineage_app.command("failures")
def failures_cmd(
    execution: Annotated[
        str | None,
        typer.Option("--execution", "-e", help="Only this execution (id or 8+ hex prefix)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only failures since an ISO-8601 time or an age (30m, 1h, 2d)."),
    ] = None,
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Most recent failures first: lineage id, execution, route, adapter, time, error class."""
    after = parse_since(since) if since is not None else None
    with _reader() as conn:
        page = q.failures(conn, execution=execution, since=after, limit=limit, cursor=cursor)
    _print_page(page, output, fmt.FAILURE_COLUMNS)


@lineage_app.command("chain")
def chain_cmd(
    lineage_id: LineageArg,
    max_nodes: Annotated[
        int, typer.Option(min=1, max=100_000, help="Stop the walk after this many rows.")
    ] = q.DEFAULT_MAX_NODES,
    output: OutputOpt = Output.table,
) -> None:
    """Ancestors up to the root and every descendant, drawn as a tree."""
    with _reader() as conn:
        result = q.chain(conn, lineage_id, max_nodes=max_nodes)
    typer.echo(fmt.dumps(result) if output is Output.json else fmt.chain_tree(result, _style()))


@lineage_app.command("children")
def children_cmd(
    lineage_id: LineageArg,
    limit: LimitOpt = 100,
    cursor: CursorOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The messages a row produced (its direct children)."""
    with _reader() as conn:
        page = q.children(conn, lineage_id, limit=limit, cursor=cursor)
    _print_page(page, output, fmt.LINEAGE_COLUMNS)


@lineage_app.command("get")
def get_cmd(lineage_id: LineageArg, output: OutputOpt = Output.table) -> None:
    """One row, every field: the error with its traceback, metadata with input_key."""
    with _reader() as conn:
        row = q.get_lineage(conn, lineage_id)
    typer.echo(fmt.dumps(row) if output is Output.json else fmt.lineage_card(row, _style()))


@lineage_app.command("list")
def list_cmd(
    execution: ExecutionOpt,
    status: Annotated[
        str | None, typer.Option(help="pending, completed, failed or cancelled.")
    ] = None,
    adapter: Annotated[str | None, typer.Option(help="Only this adapter.")] = None,
    route: Annotated[str | None, typer.Option(help="Only this route.")] = None,
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Rows of one execution, oldest first, filtered; page on with --cursor."""
    with _reader() as conn:
        page = q.list_lineage(
            conn,
            execution=execution,
            status=status,
            adapter=adapter,
            route=route,
            limit=limit,
            cursor=cursor,
        )
    _print_page(page, output, fmt.LINEAGE_COLUMNS)


@lineage_app.command("batch")
def batch_cmd(
    batch_id: Annotated[str, typer.Argument(help="Batch id (or a unique 8+ hex prefix).")],
    output: OutputOpt = Output.table,
) -> None:
    """Every row of one batch with its outcome, and a summary line."""
    with _reader() as conn:
        result = q.batch(conn, batch_id)
    if output is Output.json:
        typer.echo(fmt.dumps(result))
        return
    typer.echo(fmt.table(fmt.LINEAGE_COLUMNS, result.rows, _style()))
    typer.echo(fmt.batch_summary(result))


@lineage_app.command("stats")
def stats_cmd(execution: ExecutionOpt, output: OutputOpt = Output.table) -> None:
    """Counts per route and adapter: ROUTE ADAPTER COUNT COMPLETED FAILED PENDING."""
    with _reader() as conn:
        result = q.stats(conn, execution)
    if output is Output.json:
        typer.echo(fmt.dumps(result))
    else:
        typer.echo(fmt.stats_table(result.rows, _style()) if result.rows else "(no rows)")


@execution_app.command("get")
def execution_get_cmd(
    execution_id: Annotated[str, typer.Argument(help="Execution id (or a unique 8+ hex prefix).")],
    output: OutputOpt = Output.table,
) -> None:
    """Status, pipeline, times, counts, and what it replays."""
    with _reader() as conn:
        row = q.get_execution(conn, execution_id)
    typer.echo(fmt.dumps(row) if output is Output.json else fmt.execution_card(row, _style()))


@execution_app.command("list")
def execution_list_cmd(
    status: Annotated[str | None, typer.Option(help="Only executions in this status.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only this pipeline.")] = None,
    limit: LimitOpt = 50,
    cursor: CursorOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Executions, most recently started first."""
    with _reader() as conn:
        page = q.list_executions(conn, status=status, pipeline=pipeline, limit=limit, cursor=cursor)
    _print_page(page, output, fmt.EXECUTION_COLUMNS)


@execution_app.command("abandon")
def execution_abandon_cmd(
    execution_id: Annotated[str, typer.Argument(help="Execution id (or a unique 8+ hex prefix).")],
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Even if it recorded lineage within --idle (it may still be running)."
        ),
    ] = False,
    idle: Annotated[
        float,
        typer.Option(
            min=0, help="Minutes without lineage after which its processes count as gone."
        ),
    ] = 10.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for Kafka.")] = 30.0,
    output: OutputOpt = Output.table,
) -> None:
    """Record that an execution's processes are gone for good (their machine is
    lost, their spool with it): every invocation still pending fails, and the
    execution if it is still running, as ProcessDied, as the spool recovery of
    a killed process records them. Safe to repeat."""
    from ._abandon import abandon

    with _reader() as conn:
        report = abandon(conn, execution_id, force=force, idle_s=idle * 60, timeout=timeout)
    if output is Output.json:
        typer.echo(fmt.dumps(report))
        return
    typer.echo(report.summary())


@api_app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
) -> None:
    """Run the REST API (uvicorn) on the read-only role; OpenAPI at /openapi.json."""
    try:
        import uvicorn

        from ._api import create_app
    except ImportError as e:
        raise ConfigError(
            f"the API needs its extra: pip install 'factflow-lineage[api]' ({e})"
        ) from e
    from ._settings import ApiSettings

    app = create_app(Settings.from_env(), ApiSettings.from_env())
    uvicorn.run(app, host=host, port=port, log_level="info")
