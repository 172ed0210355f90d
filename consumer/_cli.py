"""The consumer's commands, mounted by the root app.

- ``factflow projector run``: the long-running service (SIGTERM: finish the batch, exit 0).
- ``factflow projector status``: lag per partition.
- ``factflow projection rebuild``: replay into a fresh schema, then swap it in.
- ``factflow dlq list``: the dead letters, newest first.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import psycopg
import typer

from factflow_lineage.cli import Output, OutputOpt
from factflow_lineage.config import Settings
from factflow_lineage.db import connect, first_line
from factflow_lineage.errors import DatabaseUnavailable, NotFound

from ._service import (
    KAFKA_LOGGER,
    Projector,
    ProjectorConfig,
    stop_on_signals,
)


class GroupProtocol(StrEnum):
    """Kafka consumer group protocols."""

    consumer = "consumer"
    classic = "classic"


projector_app = typer.Typer(
    name="projector", help="The projector from Kafka into PostgreSQL.", no_args_is_help=True
)
projection_app = typer.Typer(
    name="projection", help="The projection as a whole: rebuild by replay.", no_args_is_help=True
)
dlq_app = typer.Typer(
    name="dlq", help="Dead letters: events the projector could not use.", no_args_is_help=True
)


# A callback makes each app a group even with a single command, so that
# `factflow dlq list` reads the same whether the app is mounted or run alone.
@projector_app.callback()
def _projector() -> None:
    """The projector from Kafka into PostgreSQL."""


@projection_app.callback()
def _projection() -> None:
    """The projection as a whole: rebuild by replay."""


@dlq_app.callback()
def _dlq() -> None:
    """Dead letters: events the projector could not use."""


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if level.upper() != "DEBUG":
        # librdkafka logs every failed reconnect; the projector itself reports
        # outages once per change of state.
        logging.getLogger(KAFKA_LOGGER).setLevel(logging.CRITICAL)


@projector_app.command("run")
def run_command(
    group: Annotated[
        str | None,
        typer.Option(
            help="Kafka consumer group of the projectors of this schema "
            "[default: factflow-projector.<topic>.<schema>.<digest>].",
            show_default=False,
        ),
    ] = None,
    take_over: Annotated[
        bool,
        typer.Option(
            "--take-over",
            help="Make this group the schema's owner even if another group owns it; "
            "that group's projectors stop at their next batch.",
        ),
    ] = False,
    batch_max: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Most events in one transaction.")
    ] = 50_000,
    group_protocol: Annotated[
        GroupProtocol, typer.Option(help="consumer (KIP-848) or classic (cooperative-sticky).")
    ] = GroupProtocol.consumer,
    migrate: Annotated[
        bool, typer.Option(help="Apply pending projection migrations before starting.")
    ] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    """Run the projector until SIGTERM/SIGINT (then finish the batch in hand and exit 0)."""
    _logging(log_level)
    settings = Settings.from_env()
    config = ProjectorConfig(
        group_id=group,
        take_over=take_over,
        batch_max=batch_max,
        group_protocol=group_protocol.value,
    )
    # Signals stop the service from here on, migrations included.
    with stop_on_signals(threading.Event()) as stop:
        if migrate:
            from factflow_lineage.migrations import apply_migrations, projection_migrations

            with connect(settings.postgres.dsn, autocommit=True) as conn:
                apply_migrations(conn, settings.postgres.schema, projection_migrations())
        if not stop.is_set():
            Projector(settings, config).run(stop)


@projector_app.command("status")
def status_command(output: OutputOpt = Output.table) -> None:
    """Lag per partition: the topic's high watermark minus the projection's stored offset."""
    from ._status import projection_status

    settings = Settings.from_env()
    lags, owner = projection_status(settings)
    total = sum(lag.lag for lag in lags)
    if output is Output.json:
        typer.echo(
            json.dumps(
                {
                    "topic": settings.kafka.topic,
                    "schema": settings.postgres.schema,
                    "owner": None
                    if owner is None
                    else {
                        "group_id": owner.group_id,
                        "topic": owner.topic,
                        "claimed_at": owner.claimed_at.isoformat(),
                    },
                    "total_lag": total,
                    "partitions": [
                        {
                            "partition": lag.partition,
                            "high_watermark": lag.high_watermark,
                            "stored_offset": lag.stored_offset,
                            "lag": lag.lag,
                            "updated_at": None
                            if lag.updated_at is None
                            else lag.updated_at.isoformat(),
                        }
                        for lag in lags
                    ],
                },
                indent=2,
            )
        )
        return
    typer.echo(f"topic {settings.kafka.topic} -> schema {settings.postgres.schema}")
    if owner is None:
        typer.echo("owner: none yet (the first `factflow projector run` claims the schema)")
    else:
        typer.echo(
            f"owner: consumer group {owner.group_id} (topic {owner.topic}, since "
            f"{owner.claimed_at.isoformat(timespec='seconds')})"
        )
        if owner.topic != settings.kafka.topic:
            typer.echo(
                f"warning: the owner projects topic {owner.topic}, not {settings.kafka.topic}"
            )
    typer.echo(
        _table(
            ("PARTITION", "HIGH WATERMARK", "STORED OFFSET", "LAG", "LAST ADVANCE"),
            [
                (
                    lag.partition,
                    lag.high_watermark,
                    "-" if lag.stored_offset is None else lag.stored_offset,
                    lag.lag,
                    "-" if lag.updated_at is None else lag.updated_at.isoformat(timespec="seconds"),
                )
                for lag in lags
            ],
        )
    )
    typer.echo(f"total lag: {total}")


@projection_app.command("rebuild")
def rebuild_command(
    drop_old: Annotated[
        bool, typer.Option("--drop-old", help="Drop the previous projection after the swap.")
    ] = False,
    batch_max: Annotated[int, typer.Option(min=1, max=1_000_000)] = 50_000,
    catch_up_lag: Annotated[
        int,
        typer.Option(min=0, help="Swap once this few events behind the live projection."),
    ] = 20_000,
) -> None:
    """Replay the topic into a fresh schema, then swap it in atomically."""
    from ._rebuild import RebuildOptions, RebuildProgress, rebuild

    _logging("WARNING")
    settings = Settings.from_env()

    def show(p: RebuildProgress) -> None:
        eta = "-" if p.eta_s is None else f"{p.eta_s:.0f}s"
        typer.echo(
            f"{p.phase}: {p.events:,} events, {p.events_per_s:,.0f} events/s, "
            f"lag {p.lag:,}, ETA {eta}",
            err=True,
        )

    report = rebuild(
        settings,
        RebuildOptions(batch_max=batch_max, drop_old=drop_old, catch_up_lag=catch_up_lag),
        progress=show,
    )
    typer.echo(
        f"rebuilt schema {report.schema}: {report.events:,} events, "
        f"{report.dead_letters:,} dead letters in {report.seconds:.1f}s; swapped in"
    )
    if report.old_schema is not None:
        typer.echo(
            f"the previous projection is kept as schema {report.old_schema}; drop it with\n"
            f"  psql \"$FACTFLOW_PG_DSN\" -c 'DROP SCHEMA {report.old_schema} CASCADE'"
        )
    elif report.dropped_old:
        typer.echo("the previous projection was dropped")


@dlq_app.command("list")
def dlq_list_command(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000, help="Rows.")] = 20,
    output: OutputOpt = Output.table,
) -> None:
    """The newest dead letters: where they were, why they were rejected."""
    from ._dlq import list_dead_letters

    settings = Settings.from_env()
    pg = settings.postgres
    try:
        with connect(pg.read_dsn, autocommit=True) as conn:
            letters = list_dead_letters(conn, pg.schema, limit=limit)
    except psycopg.errors.UndefinedTable as e:
        raise NotFound(f"schema {pg.schema!r} has no projection (run `factflow init`)") from e
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(first_line(e)) from e
    if output is Output.json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": d.id,
                        "topic": d.topic,
                        "partition": d.partition,
                        "offset": d.offset,
                        "received_at": d.received_at.isoformat(),
                        "error": d.error,
                        "key_hex": None if d.key is None else d.key.hex(),
                        "raw_base64": None
                        if d.raw is None
                        else base64.b64encode(d.raw).decode("ascii"),
                    }
                    for d in letters
                ],
                indent=2,
            )
        )
        return
    if not letters:
        typer.echo("(no dead letters)")
        return
    typer.echo(
        _table(
            ("ID", "RECEIVED", "PARTITION", "OFFSET", "BYTES", "ERROR"),
            [
                (
                    d.id,
                    d.received_at.isoformat(timespec="seconds"),
                    d.partition,
                    d.offset,
                    "-" if d.raw is None else len(d.raw),
                    d.error if len(d.error) <= 100 else d.error[:99] + "…",
                )
                for d in letters
            ],
        )
    )
