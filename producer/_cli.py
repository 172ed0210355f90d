"""``factflow spool``: the recorder's crash spool, from the command line."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from factflow_lineage.errors import LineageError

from ._config import RecorderConfig, default_spool_dir
from ._ids import new_random_id
from ._pump import Pump
from ._ratelog import LOGGER, RateLimitedLog

spool_app = typer.Typer(
    name="spool",
    help="The lineage recorder's crash spool (events not yet acknowledged by Kafka).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@spool_app.callback()
def _spool() -> None:
    """The lineage recorder's crash spool (events not yet acknowledged by Kafka)."""
    # A callback keeps `drain` a sub-command: a Typer app with one command and no
    # callback would run that command directly.


@dataclass(frozen=True)
class DrainReport:
    """What ``drain`` did."""

    spool_dir: Path
    adopted: int  # spool directories of dead recorders taken over
    drained: int  # of those, fully delivered and removed
    recovered: int  # events re-sent and acknowledged
    crash_closed: int  # invocations and executions the dead ones had open, closed
    live: int  # directories of running recorders, left alone
    last_error: str | None

    @property
    def complete(self) -> bool:
        return self.drained == self.adopted


def drain(config: RecorderConfig, timeout: float) -> DrainReport:
    """Re-send the spools of dead recorders under ``config.spool_dir`` (to the
    topic each was written for), waiting up to ``timeout`` seconds."""
    root = config.spool_dir if config.spool_dir is not None else default_spool_dir()
    config = dataclasses.replace(config, spool_dir=root)
    pump = Pump(
        config, new_random_id(), RateLimitedLog(LOGGER, 60.0), spool=False, adopt_topic=None
    )
    try:
        pump.wait(timeout, lambda: not pump.recovering() and pump.pending() == 0)
        adopted = pump.orphans_done + len(pump.orphans)
        drained = pump.orphans_done
        recovered = pump.recovered
        crash_closed = pump.crash_closed
        held = {o.path for o in pump.orphans}
    finally:
        pump.close(0)
    live = 0
    if root.is_dir():
        for entry in os.scandir(root):
            if entry.is_dir() and not entry.name.startswith(".") and Path(entry.path) not in held:
                live += 1
    return DrainReport(root, adopted, drained, recovered, crash_closed, live, pump.last_error)


@spool_app.command("drain")
def drain_command(
    spool_dir: Annotated[
        Path | None,
        typer.Option(
            help="Spool directory (default: FACTFLOW_SPOOL_DIR or ~/.local/state/factflow/spool)."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for Kafka.")] = 60.0,
    bootstrap: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap servers (default: FACTFLOW_KAFKA_BOOTSTRAP)."),
    ] = None,
) -> None:
    """Re-send what recorders that died (kill -9, out of memory, a killed
    container) left in their spool, then remove it; what they had open (invocations
    started and never ended, their execution) is recorded as failed, ProcessDied.
    Spools of running recorders are left alone. Exits 0 when everything was delivered."""
    try:
        overrides: dict[str, Any] = {}
        if spool_dir is not None:
            overrides["spool_dir"] = spool_dir
        if bootstrap is not None:
            overrides["bootstrap"] = bootstrap
        config = RecorderConfig.from_env(**overrides)
        started = time.monotonic()
        report = drain(config, timeout)
    except LineageError as e:
        typer.echo(f"factflow: error: {e}", err=True)
        raise typer.Exit(1) from None
    if not report.complete:
        why = (
            f"Kafka at {config.bootstrap}: {report.last_error}"
            if report.last_error
            else (f"Kafka at {config.bootstrap} did not acknowledge them")
        )
        typer.echo(
            f"factflow: error: spool drain: {report.adopted - report.drained} of {report.adopted} "
            f"spools in {report.spool_dir} not delivered within {timeout:g}s ({why})",
            err=True,
        )
        raise typer.Exit(1)
    if report.adopted == 0:
        typer.echo(f"spool drain: nothing to re-send in {report.spool_dir}" + _live(report))
        return
    typer.echo(
        f"spool drain: re-sent {report.recovered} events from {report.adopted} spools in "
        f"{report.spool_dir} ({time.monotonic() - started:.1f}s)" + _closed(report) + _live(report)
    )


def _closed(report: DrainReport) -> str:
    if not report.crash_closed:
        return ""
    return (
        f"; closed {report.crash_closed} invocations or executions their processes had "
        "open when they died, as failed (ProcessDied)"
    )


def _live(report: DrainReport) -> str:
    return f"; {report.live} spools of running recorders left alone" if report.live else ""
