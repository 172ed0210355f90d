"""The ``factflow`` command: a root Typer app that mounts each package's sub-app.

Errors: every command may raise a ``LineageError``; the root group turns it into
one line on stderr and an exit code (1 failure or not found, 2 usage), so an
operator never sees a traceback for bad input or a database that is down.
"""

from __future__ import annotations

from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from . import __version__
from .config import Settings
from .errors import ConfigError, LineageError


class UsageError(ConfigError):
    """A malformed argument the parser could not catch (an id, a prefix, a date)."""


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
    """Each package contributes its own commands; the root only knows their names."""
    # Imported here, not at the top, so that a package still being written does
    # not break the commands of the others.
    import importlib

    for module, attr, name in _SUBAPPS:
        try:
            sub = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        app.add_typer(sub, name=name)


_SUBAPPS: tuple[tuple[str, str, str], ...] = (
    ("factflow_lineage.producer._cli", "spool_app", "spool"),
)


def main() -> None:
    """Console-script entry point."""
    _mount_subapps()
    app()
