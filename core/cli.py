"""The ``factflow`` command: a root Typer app that mounts each package's sub-app.

Errors: every command may raise a ``LineageError``; the root group turns it into
one line on stderr and an exit code (1 failure or not found, 2 usage), so an
operator never sees a traceback for bad input or a database that is down.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from . import __version__
from .config import Settings
from .errors import ConfigError, LineageError, UsageError

__all__ = ["Output", "OutputOpt", "UsageError", "app", "exit_code", "main"]


class Output(StrEnum):
    """How a command prints its result: for people, or one JSON document for jq."""

    table = "table"
    json = "json"


OutputOpt = Annotated[
    Output,
    typer.Option("--output", "-o", help="table for people, json (one document) for jq."),
]


def exit_code(error: LineageError) -> int:
    """The exit code an error maps to: 2 for usage errors, 1 for the rest."""
    return 2 if isinstance(error, ConfigError) else 1


class _LineageGroup(TyperGroup):
    """Root group: our errors become one stderr line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LineageError as e:
            typer.echo(f"factflow: error: {e}", err=True)
            raise typer.Exit(exit_code(e)) from None


app = typer.Typer(
    cls=_LineageGroup,
    name="factflow",
    help="factflow lineage: record, project and query the lineage of pipeline runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"factflow-lineage {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """factflow lineage: record, project and query the lineage of pipeline runs."""


@app.command()
def init(
    skip_topic: Annotated[bool, typer.Option(help="Do not touch Kafka.")] = False,
    skip_db: Annotated[bool, typer.Option(help="Do not touch PostgreSQL.")] = False,
) -> None:
    """Create the lineage topic and apply the projection's migrations (idempotent)."""
    from .db import connect
    from .migrations import apply_migrations, projection_migrations
    from .provisioning import ensure_topic

    settings = Settings.from_env()
    changed = False
    if not skip_topic:
        topic = ensure_topic(settings.kafka)
        if topic.created:
            changed = True
            typer.echo(f"topic {topic.topic}: created with {topic.partitions} partitions")
        else:
            typer.echo(f"topic {topic.topic}: exists ({topic.partitions} partitions), unchanged")
        for warning in topic.warnings:
            typer.echo(f"warning: {warning}", err=True)
    if not skip_db:
        with connect(settings.postgres.dsn) as conn:
            report = apply_migrations(conn, settings.postgres.schema, projection_migrations())
        if report.applied:
            changed = True
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in report.applied)
            typer.echo(f"schema {report.schema}: applied {names}")
        else:
            typer.echo(f"schema {report.schema}: up to date ({len(report.already)} migrations)")
    typer.echo("init: done" if changed else "init: nothing to do, everything was in place")


def _mount_subapps() -> None:
    """Each package contributes its own commands; the root only places them.

    Imported at call time, not at module import: the packages' CLI modules
    import this module's error handling, and `factflow --version` should not
    pay for importing all of them.
    """
    from factflow_lineage.consumer._cli import dlq_app, projection_app, projector_app
    from factflow_lineage.pipeline._cli import demo_command, replay_command, storage_app
    from factflow_lineage.producer._cli import spool_app
    from factflow_lineage.query._cli import api_app, execution_app, lineage_app

    execution_app.command("replay")(replay_command)
    app.command("demo")(demo_command)
    for sub, name in (
        (lineage_app, "lineage"),
        (execution_app, "execution"),
        (storage_app, "storage"),
        (projector_app, "projector"),
        (projection_app, "projection"),
        (dlq_app, "dlq"),
        (spool_app, "spool"),
        (api_app, "api"),
    ):
        app.add_typer(sub, name=name)


_mounted = False


def mounted_app() -> typer.Typer:
    """The root app with every sub-app mounted (what tests drive with CliRunner)."""
    global _mounted
    if not _mounted:
        _mount_subapps()
        _mounted = True
    return app


def main() -> None:
    """Console-script entry point."""
    mounted_app()()
